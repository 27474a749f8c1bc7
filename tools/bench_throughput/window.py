"""The equal window: one list of optimizer steps, each a list of pair indices, that every arm trains in order.

The parent draws it once per data set (`window_batches`) and writes it to a file; each arm reads it:
rmtrain's arms through `window_dataset` (a config's data set), TRL as a sequentially sampled selection of
the same pairs, the ceiling as the source of its rows' tokens. Every arm fingerprints the sequences it
actually trained in the measured steps (`window_digest`), and the report compares those fingerprints.
"""

import hashlib
import json
import random


def window_batches(lengths: list[tuple[int, int]], pairs_per_step: int, steps: int, order: str, seed: int):
    """`steps` batches of `pairs_per_step` pair indices.

    order "grouped": rmtrain's padded batching (`rmtrain.data.packing.LengthGroupedSampler`, the run's
    seed): pairs of similar length share a step. order "random": consecutive pairs of a seeded shuffle
    (TRL's default batching).
    """
    if order == "grouped":
        from rmtrain.data.packing import LengthGroupedSampler

        class Lengths:  # what the sampler reads of a data set
            pairs = {"chosen_ids": [[0] * c for c, _ in lengths], "rejected_ids": [[0] * r for _, r in lengths]}

        flat = list(LengthGroupedSampler(Lengths(), batch_size=pairs_per_step, seed=seed))
    else:
        flat = list(range(len(lengths)))
        random.Random(seed).shuffle(flat)
    flat = (flat * (1 + pairs_per_step * steps // len(flat)))[: pairs_per_step * steps]
    return [flat[k : k + pairs_per_step] for k in range(0, len(flat), pairs_per_step)]


def step_digest(sequences: list[list[int]]) -> str:
    """A fingerprint of one step's sequences (chosen sides, then rejected sides), in order."""
    return hashlib.sha256(json.dumps(sequences).encode()).hexdigest()


def window_digest(step_digests: list[str]) -> str:
    return hashlib.sha256("".join(step_digests).encode()).hexdigest()[:16]


def expected_window_digest(pairs, window: list[list[int]], first: int) -> str:
    """What an arm that trained steps first.. of the window, in order, reports."""
    chosen, rejected = pairs["chosen_ids"], pairs["rejected_ids"]
    digests = [step_digest([chosen[i] for i in step] + [rejected[i] for i in step]) for step in window[first:]]
    return window_digest(digests)


class WindowDataset:
    """The window's pairs for rmtrain's arms: packed, item k is step k's pairs (a bin: one row, batch_size 1);
    padded, item j is the window's j-th pair (batch_size pairs_per_step, sequential sampler)."""

    def __init__(self, pairs, window: list[list[int]], packed: bool):
        self.pairs = pairs  # the PreferenceDataset (what rmtrain's checks read)
        self.window = window
        self.packed = packed
        self.flat = [i for step in window for i in step]
        self.summary = dict(pairs.summary)
        if packed:
            longest = max(sum(len(pairs.pairs[i][k]) for i in step for k in ("chosen_ids", "rejected_ids"))
                          for step in window)  # fmt: skip
            self.summary.update(bins=len(window), max_packed_length=longest)

    def __len__(self) -> int:
        return len(self.window) if self.packed else len(self.flat)

    def __getitem__(self, index: int):
        if self.packed:
            return [self.pairs[i] for i in self.window[index]]
        return self.pairs[self.flat[index]]

    def __deepcopy__(self, memo):
        return self

    def summary_text(self) -> str:
        mode = "one packed row per step" if self.packed else "padded batches"
        return f"{self.pairs.summary_text()}; benchmark window of {len(self.window)} steps, {mode}"


def window_dataset(window_file: str, use_varlen_attn: bool, max_packed_length: int | None = None, **dataset_cfg):
    """A config's data set: rmtrain's PreferenceDataset (built as `build_preference_dataset` builds it),
    served in the window's order. `max_packed_length` is accepted and unused: a step packs its pairs whole."""
    from rmtrain.data import build_preference_dataset

    with open(window_file) as handle:
        window = json.load(handle)
    pairs = build_preference_dataset(use_varlen_attn=False, **dataset_cfg)
    return WindowDataset(pairs, window, packed=use_varlen_attn)

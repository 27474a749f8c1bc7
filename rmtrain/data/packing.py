"""Batch shapes: padding-free bins of whole pairs, or length-grouped padded batches.

Packed (`use_varlen_attn=True`): pairs are shuffled with a fixed seed and filled, whole and in
that order, into bins of at most `max_packed_length` tokens. A bin is one training item; the
collate function lays its sequences end to end in one row with no padding.

Padded: `LengthGroupedSampler` orders pairs so that each batch holds pairs of similar length,
which keeps the padding small; shuffled per epoch with the run's seed, split across ranks.
"""

import logging
import math

import torch
from mmengine.dist import sync_random_seed
from mmengine.logging import print_log

from rmtrain.errors import ConfigError
from rmtrain.parallel import data_parallel_rank_and_size


def pair_lengths(dataset) -> list[tuple[int, int]]:
    """(chosen tokens, rejected tokens) of every pair of a PreferenceDataset."""
    return [(len(c), len(r)) for c, r in zip(dataset.pairs["chosen_ids"], dataset.pairs["rejected_ids"])]


def pack_pairs(lengths: list[tuple[int, int]], max_packed_length: int, seed: int) -> list[list[int]]:
    """Pair indices -> bins of at most `max_packed_length` tokens; deterministic for a seed, nothing dropped."""
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    bins, current, current_tokens = [], [], 0
    for index in order:
        tokens = sum(lengths[index])
        if current and current_tokens + tokens > max_packed_length:
            bins.append(current)
            current, current_tokens = [], 0
        current.append(index)
        current_tokens += tokens
    if current:
        bins.append(current)
    return bins


class PackedPreferenceDataset:
    """Bins of whole pairs. Item: a list of pair dicts (see PreferenceDataset.__getitem__)."""

    def __init__(self, pairs, max_packed_length: int, seed: int = 0):
        max_length = pairs.summary["max_length"]
        if max_packed_length < 2 * max_length:
            raise ConfigError(
                f"max_packed_length={max_packed_length} must hold a whole pair of two max_length={max_length} "
                f"sequences: set it to at least {2 * max_length}"
            )
        self.pairs = pairs
        self.max_packed_length = max_packed_length
        self.seed = seed
        self.bins = pack_pairs(pair_lengths(pairs), max_packed_length, seed)
        self.summary = dict(pairs.summary, bins=len(self.bins), max_packed_length=max_packed_length)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> list[dict]:
        return [self.pairs[i] for i in self.bins[index]]

    def in_memory(self) -> "PackedPreferenceDataset":
        return PackedPreferenceDataset(self.pairs.in_memory(), self.max_packed_length, self.seed)

    def __deepcopy__(self, memo):
        return self  # built once, never changed (see PreferenceDataset)

    def summary_text(self) -> str:
        s = self.summary
        fill = s["tokens"] / (s["bins"] * s["max_packed_length"])
        return (
            f"{self.pairs.summary_text()}; packed into {s['bins']} bins of at most {s['max_packed_length']} "
            f"tokens ({s['pairs'] / s['bins']:.1f} pairs and {fill:.0%} full on average), no padding"
        )


def padded_fraction(lengths: list[tuple[int, int]], batches: list[list[int]]) -> float:
    """Share of a padded batch's token slots that are padding: both sides of every pair are padded to
    the longest sequence in the batch."""
    real = slots = 0
    for batch in batches:
        longest = max(max(lengths[i]) for i in batch)
        real += sum(sum(lengths[i]) for i in batch)
        slots += 2 * len(batch) * longest
    return 1 - real / slots if slots else 0.0


# Which batching the data favours. Packed rows save the padding that length-grouped batches leave but pay
# for gathering each row's sequences into attention buckets (padded to their longest) and back. On the CPU
# (one thread, 10m model, tools/bench_batching_mode.py) the two broke even at 10-16% padding (demo data
# 10.6%: 1.00x; HH-RLHF 16.2%: 0.99x) and packing won at UltraFeedback's 15.6% (1.11x); in whole training
# runs packing won by 1.2-1.3x at 15-16% (docs/benchmarks.md). Below this share, padded batches.
PACKING_PAYS_FROM_PADDING = 0.15


def favoured_batching(grouped_padding: float) -> str:
    """'packed' or 'padded': the faster mode for data whose length-grouped batches pad this share of slots."""
    return "packed" if grouped_padding >= PACKING_PAYS_FROM_PADDING else "padded"


class LengthGroupedSampler:
    """Like mmengine's DefaultSampler (seeded per-epoch shuffle, split across ranks, rounded up so that
    every rank gets as many batches), but each batch holds pairs of similar length.

    Shuffled pairs are cut into groups of `group_batches` global batches; each group is sorted by
    length and cut into global batches; the batch order is shuffled again, so long and short
    batches alternate. Each rank takes its `batch_size` slice of every global batch.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int | None = None,
        group_batches: int = 50,
    ):
        # The data-parallel shard: the ranks of a sequence-parallel group read the same batches.
        self.rank, self.world_size = data_parallel_rank_and_size()
        self.lengths = pair_lengths(dataset)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = sync_random_seed() if seed is None else seed
        self.group_batches = group_batches
        self.epoch = 0
        global_batch = batch_size * self.world_size
        n = len(self.lengths)
        self.total = math.ceil(n / global_batch) * global_batch
        if self.rank == 0:
            grouped = padded_fraction(self.lengths, self._global_batches())
            random_order = padded_fraction(self.lengths, self._global_batches(group=False))
            print_log(
                f"length-grouped batches: {grouped:.1%} of padded token slots are padding "
                f"(random batches: {random_order:.1%})",
                logger="current",
                level=logging.INFO,
            )

    def _global_batches(self, group: bool = True) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.lengths)
        order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
        order = (order * math.ceil(self.total / n))[: self.total]  # round up by repeating the first pairs
        global_batch = self.batch_size * self.world_size
        chunk = global_batch * self.group_batches if group else global_batch
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            if group:
                part = sorted(part, key=lambda i: max(self.lengths[i]), reverse=True)
            batches += [part[k : k + global_batch] for k in range(0, len(part), global_batch)]
        if self.shuffle and group:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def __iter__(self):
        for batch in self._global_batches():
            yield from batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.total // self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

"""Preference metrics from scores, in one place: validation during training and `rmtrain eval` use them.

`preference_metrics` and `distribution` are pure functions over plain lists of floats; nothing
here knows about models or files. `RewardMetric` is the mmengine metric that configs name for
validation (`val_evaluator = dict(type=RewardMetric)`), built on them.
"""

import math
import sys
from collections.abc import Sequence

from mmengine.evaluator import BaseMetric

from rmtrain.errors import EvaluationError
from rmtrain.parallel import sequence_parallel_rank, sequence_parallel_size

PERCENTILES = (5, 25, 50, 75, 95)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of ascending values, interpolated linearly between ranks (as numpy's default)."""
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def distribution(values: Sequence[float]) -> dict:
    """{'mean', 'std' (population), 'p5', 'p25', 'p50', 'p75', 'p95'} of a non-empty list."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((value - mean) ** 2 for value in values) / len(values))
    ordered = sorted(values)
    return {"mean": mean, "std": std, **{f"p{q}": percentile(ordered, q) for q in PERCENTILES}}


def preference_metrics(
    chosen_scores: Sequence[float],
    rejected_scores: Sequence[float],
    subsets: Sequence[str] | None = None,
) -> dict:
    """Accuracy and score statistics of scored pairs.

    Pair i is correct when chosen_scores[i] > rejected_scores[i] strictly: a tie counts as wrong,
    so a model that scores everything alike gets 0, not 0.5. Returns `pairs`, `correct`,
    `accuracy`, `margin_mean` (chosen - rejected), `chosen_score_mean`, `rejected_score_mean`,
    `scores` (the distribution of all 2 * pairs scores, see `distribution`), `margins` (of the
    per-pair margins) and `subsets` ({label: {'pairs', 'correct', 'accuracy'}}, sorted by label;
    empty without `subsets`).
    """
    chosen, rejected = [float(s) for s in chosen_scores], [float(s) for s in rejected_scores]
    if len(chosen) != len(rejected):
        raise EvaluationError(f"{len(chosen)} chosen scores but {len(rejected)} rejected scores")
    if subsets is not None and len(subsets) != len(chosen):
        raise EvaluationError(f"{len(subsets)} subset labels for {len(chosen)} pairs")
    if not chosen:
        raise EvaluationError("no pairs to evaluate: accuracy and score statistics need at least one scored pair")
    correct = [c > r for c, r in zip(chosen, rejected)]  # a tie counts as wrong
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {
        "pairs": len(chosen),
        "correct": sum(correct),
        "accuracy": sum(correct) / len(chosen),
        "margin_mean": sum(margins) / len(margins),
        "chosen_score_mean": sum(chosen) / len(chosen),
        "rejected_score_mean": sum(rejected) / len(rejected),
        "scores": distribution(chosen + rejected),
        "margins": distribution(margins),
        "subsets": subset_accuracy(correct, subsets) if subsets is not None else {},
    }


def subset_accuracy(correct: Sequence[bool], subsets: Sequence[str]) -> dict:
    """{label: {'pairs', 'correct', 'accuracy'}} for each subset label, sorted by label."""
    counts: dict[str, list[int]] = {}
    for is_correct, label in zip(correct, subsets):
        total_and_correct = counts.setdefault(str(label), [0, 0])
        total_and_correct[0] += 1
        total_and_correct[1] += int(is_correct)
    return {
        label: {"pairs": total, "correct": right, "accuracy": right / total}
        for label, (total, right) in sorted(counts.items())
    }


class RewardMetric(BaseMetric):
    """Accuracy and mean scores on the validation pairs, from RewardModel's predict mode.

    mmengine's ValLoop calls `model.val_step`, which returns one `{'chosen_score', 'rejected_score'}`
    per pair. Reported keys, with the default prefix 'val' (as `CheckpointHook(save_best=...)`
    names them): val/pairs, val/accuracy (a tie counts as wrong), val/margin_mean,
    val/chosen_score_mean, val/rejected_score_mean, val/score_std.

    Args:
        collect_device: how the ranks' results reach rank 0. 'gpu' (mmengine's name) sends them
            through the process group, which also works on CPU (gloo) and across nodes; 'cpu'
            goes through a temporary folder that every rank must see.
        prefix: the key prefix (default 'val').
    """

    default_prefix = "val"
    KEYS = ("pairs", "accuracy", "margin_mean", "chosen_score_mean", "rejected_score_mean", "score_std")

    def __init__(self, collect_device: str = "gpu", prefix: str | None = None, collect_dir: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)

    def process(self, data_batch, data_samples) -> None:
        # Under sequence parallelism the ranks of a group score the same pairs: each result carries
        # its rank's place in the group, and only the first rank's count.
        part = sequence_parallel_rank()
        self.results.extend((float(p["chosen_score"]), float(p["rejected_score"]), part) for p in data_samples)

    def evaluate(self, size: int) -> dict:
        # mmengine keeps the first `size` gathered results to drop the pairs that the distributed
        # sampler repeats so every rank gets as many. `size` counts data set items, which are pairs
        # only without packing (PreferenceDataset.metainfo gives the count); a packed item is a bin of
        # several pairs, and then every result is kept (repeats included, in multi-process runs).
        # Sequence parallelism: the gathered results interleave the ranks, sp copies of each pair, so the
        # first pairs * sp of them hold the first `pairs` once each from the groups' first ranks.
        pairs = (self.dataset_meta or {}).get("pairs")
        return super().evaluate(pairs * sequence_parallel_size() if pairs is not None else sys.maxsize)

    def compute_metrics(self, results: list) -> dict:
        results = [(c, r) for c, r, part in results if part == 0]
        chosen = [c for c, _ in results]
        rejected = [r for _, r in results]
        metrics = preference_metrics(chosen, rejected)
        return {
            "pairs": metrics["pairs"],
            "accuracy": metrics["accuracy"],
            "margin_mean": metrics["margin_mean"],
            "chosen_score_mean": metrics["chosen_score_mean"],
            "rejected_score_mean": metrics["rejected_score_mean"],
            "score_std": metrics["scores"]["std"],
        }

    @classmethod
    def reported_keys(cls, prefix: str | None = None) -> list[str]:
        """The keys `evaluate` returns, e.g. ['val/pairs', 'val/accuracy', ...]: for checking save_best early."""
        prefix = prefix or cls.default_prefix
        return [f"{prefix}/{key}" if prefix else key for key in cls.KEYS]

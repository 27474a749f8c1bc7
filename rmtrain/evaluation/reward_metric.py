"""Validation during training: mmengine's metric interface around `preference_metrics`."""

import sys

from mmengine.evaluator import BaseMetric

from rmtrain.evaluation.metrics import preference_metrics


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
        self.results.extend((float(p["chosen_score"]), float(p["rejected_score"])) for p in data_samples)

    def evaluate(self, size: int) -> dict:
        # mmengine keeps the first `size` gathered results to drop the pairs that the distributed
        # sampler repeats so every rank gets as many. `size` counts data set items, which are pairs
        # only without packing (PreferenceDataset.metainfo gives the count); a packed item is a bin of
        # several pairs, and then every result is kept (repeats included, in multi-process runs).
        pairs = (self.dataset_meta or {}).get("pairs")
        return super().evaluate(pairs if pairs is not None else sys.maxsize)

    def compute_metrics(self, results: list) -> dict:
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

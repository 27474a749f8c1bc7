"""Log lines with the same keys on every device: mmengine reports `memory` on GPUs only."""

import re
import resource

import torch
from mmengine.runner import LogProcessor


def peak_host_memory_mb() -> int:
    """Peak resident memory of this process in MB (Linux reports ru_maxrss in KB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


# Averaged over the logging window (mmengine's default averages only loss, time and grad_norm); a
# single iteration's accuracy over a few pairs is too noisy to read.
WINDOW_MEAN_PATTERN = r".*(loss|time|data_time|grad_norm|acc|score_mean|num_samples|num_tokens).*"
MMENGINE_MEAN_PATTERN = r".*(loss|time|data_time|grad_norm).*"


class RewardLogProcessor(LogProcessor):
    """Averages the reward metrics over the window and adds `memory` (peak host MB) when no GPU is used."""

    def __init__(self, *args, mean_pattern: str = WINDOW_MEAN_PATTERN, **kwargs):
        super().__init__(*args, mean_pattern=mean_pattern, **kwargs)

    def _collect_scalars(self, custom_cfg, runner, mode: str, reserve_prefix: bool = False):
        # Window means are for training iterations. A validation metric (val/accuracy, ...) is one
        # value per validation run: averaging it over the last runs would log a stale accuracy.
        if mode == "train":
            return super()._collect_scalars(custom_cfg, runner, mode, reserve_prefix)
        pattern, self.mean_pattern = self.mean_pattern, MMENGINE_MEAN_PATTERN
        try:
            return super()._collect_scalars(custom_cfg, runner, mode, reserve_prefix)
        finally:
            self.mean_pattern = pattern

    def get_log_after_iter(self, runner, batch_idx: int, mode: str):
        tag, log_str = super().get_log_after_iter(runner, batch_idx, mode)
        if "memory" not in tag and not torch.cuda.is_available():
            memory = peak_host_memory_mb()
            tag["memory"] = memory
            # Keep mmengine's order: "... data_time: X  memory: N  loss: ..."
            log_str, found = re.subn(r"(data_time: \S+  )", rf"\g<1>memory: {memory}  ", log_str, count=1)
            if not found:
                log_str += f"  memory: {memory}"
        return tag, log_str

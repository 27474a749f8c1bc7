"""A hook for tests: ends a training process abruptly at a given iteration, as a crash would."""

import os

from mmengine.hooks import Hook


class StopAtIterHook(Hook):
    """Exits with code 17 after iteration `stop_at`; with `only_rank`, only that rank dies."""

    def __init__(self, stop_at: int, only_rank: int | None = None):
        self.stop_at = stop_at
        self.only_rank = only_rank

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 != self.stop_at:
            return
        if self.only_rank is None or runner.rank == self.only_rank:
            os._exit(17)  # no clean-up, no final checkpoint: like a killed job

"""A hook for tests: ends a training process abruptly at a given iteration, as a crash would."""

import os

from mmengine.hooks import Hook


class StopAtIterHook(Hook):
    def __init__(self, stop_at: int):
        self.stop_at = stop_at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.stop_at:
            os._exit(17)  # no clean-up, no final checkpoint: like a killed job

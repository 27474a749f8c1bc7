"""Learning-rate schedules that configs name."""

from mmengine.optim import LinearLR


class LinearWarmupLR(LinearLR):
    """LinearLR that really reaches `end_factor` by the end of its range.

    mmengine 0.10.7's LinearLR updates for the last time at step begin+N-1 with factor
    start + (end - start) * (N - 1) / N, one step short of `end_factor`; the chained cosine after it
    keeps the shortfall for the rest of the run. With a warm-up that rounds to one iteration (small
    data), the whole run trains at lr * start_factor. Here the factor goes from `start_factor` at the
    first step to `end_factor` at the last one (a one-step warm-up is no warm-up), and a warm-up that
    rounds to zero iterations becomes one instead of mmengine's "end should be larger than begin".
    """

    @classmethod
    def build_iter_from_epoch(cls, *args, begin=0, end=None, by_epoch=True, epoch_length=None, **kwargs):
        begin_iter = int(begin * epoch_length)
        end_iter = max(int(end * epoch_length), begin_iter + 1)
        return cls(*args, begin=begin_iter, end=end_iter, by_epoch=False, **kwargs)

    def _get_value(self):
        steps = self.end - self.begin
        progress = 1.0 if steps <= 1 else min(self.last_step, steps - 1) / (steps - 1)
        factor = self.start_factor + (self.end_factor - self.start_factor) * progress
        return [base_value * factor for base_value in self.base_values]

"""Hooks that keep a resumed run identical to one that never stopped."""

from mmengine.hooks import Hook


class GradientAccumulationStateHook(Hook):
    """Saves gradients accumulated since the last optimizer step into each checkpoint and restores them.

    A checkpoint taken in the middle of an accumulation window (save interval not a multiple of
    `accumulative_counts`) would otherwise lose those micro-batches' gradients on resume.
    """

    priority = "LOW"
    KEY = "accumulated_grads"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        grads = {name: p.grad.detach().cpu() for name, p in model.named_parameters() if p.grad is not None}
        if grads:
            checkpoint[self.KEY] = grads

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        grads = checkpoint.get(self.KEY)
        if not grads:
            return
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        for name, param in model.named_parameters():
            if name in grads:
                param.grad = grads[name].to(device=param.device, dtype=param.dtype)


class ZeroGradientStopHook(Hook):
    """Stops training when the gradient norm is exactly 0 in `windows` consecutive logging windows.

    A gradient of exactly zero everywhere means nothing is learnt (e.g. every pair's chosen equals its
    rejected, or the value head is detached); running on would only spend the compute. The norm is the
    one the optimizer wrapper records when it clips gradients (`train/grad_norm`); without clipping
    there is no norm to watch and the hook does nothing.
    """

    priority = "LOW"

    def __init__(self, windows: int = 3, interval: int | None = None):
        self.windows = windows
        self.interval = interval
        self._zero_windows = 0
        self._seen = 0

    def before_train(self, runner) -> None:
        if self.interval is None:
            from mmengine.hooks import LoggerHook

            loggers = [hook for hook in runner.hooks if isinstance(hook, LoggerHook)]
            self.interval = loggers[0].interval if loggers else 10
        buffer = runner.message_hub.log_scalars.get("train/grad_norm")
        self._seen = len(buffer.data[0]) if buffer is not None else 0  # a resumed run's history is not re-judged

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if not self.every_n_train_iters(runner, self.interval):
            return
        buffer = runner.message_hub.log_scalars.get("train/grad_norm")
        if buffer is None:
            return
        history = buffer.data[0]
        new = history[self._seen :] if len(history) >= self._seen else history
        self._seen = len(history)
        if len(new) == 0:
            return  # no optimizer step in this window (gradient accumulation)
        self._zero_windows = self._zero_windows + 1 if all(value == 0 for value in new) else 0
        if self._zero_windows >= self.windows:
            from rmtrain.errors import TrainingError

            raise TrainingError(
                f"the gradient norm was exactly 0 in {self._zero_windows} consecutive logging windows (up to "
                f"iteration {runner.iter + 1}): the model is not learning. Check the data (pairs whose chosen "
                "equals rejected carry no preference) and that the value head is trained; the checkpoints so "
                f"far are in {runner.work_dir}"
            )


class ResumeFitsModelHook(Hook):
    """Before a resumed run loads `path`: every weight of the checkpoint fits the model the config builds.

    Without it, a checkpoint of another config fails deep in the optimizer's state loading.
    """

    priority = "VERY_HIGH"

    def __init__(self, path: str):
        self.path = path

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        from rmtrain.checkpoints import check_weights_fit

        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        check_weights_fit(model.state_dict(), checkpoint.get("state_dict", {}), self.path)

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

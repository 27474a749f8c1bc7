"""The training loop: iteration based, sized in epochs or iterations; the validation loop, in the
training precision.

Iteration-based so that `--resume` continues mid-epoch at the exact batch: mmengine's loop
fast-forwards the (seeded) sampler past the batches already trained.
"""

import math

import torch
from mmengine.runner import IterBasedTrainLoop
from mmengine.runner import ValLoop as MMEngineValLoop
from mmengine.runner.loops import _update_losses

from rmtrain.engine.precision import validation_autocast
from rmtrain.errors import ConfigError


class TrainLoop(IterBasedTrainLoop):
    """`max_epochs` (converted to iterations over the dataloader) or `max_iters`, not both."""

    def __init__(self, runner, dataloader, max_epochs: float | None = None, max_iters: int | None = None, **kwargs):
        if (max_epochs is None) == (max_iters is None):
            raise ConfigError("train_cfg needs exactly one of max_epochs and max_iters")
        if max_epochs is not None:
            if isinstance(dataloader, dict):  # built here, as BaseLoop would, to know its length
                diff_rank_seed = runner._randomness_cfg.get("diff_rank_seed", False)
                dataloader = runner.build_dataloader(dataloader, seed=runner.seed, diff_rank_seed=diff_rank_seed)
            max_iters = max(1, math.ceil(max_epochs * len(dataloader)))
        super().__init__(runner, dataloader, max_iters=max_iters, **kwargs)


class ValLoop(MMEngineValLoop):
    """mmengine's ValLoop, with the forward pass in the training precision.

    mmengine's own runs every validation step under `autocast(enabled=fp16)`, which switches autocast
    off: validation then runs in fp32 (slow, and packed rows reach flash-attn in fp32, which it refuses).
    `rmtrain train` runs the configs' mmengine ValLoop as this one.
    """

    @torch.no_grad()
    def run_iter(self, idx, data_batch) -> None:
        self.runner.call_hook("before_val_iter", batch_idx=idx, data_batch=data_batch)
        with validation_autocast(self.runner):
            outputs = self.runner.model.val_step(data_batch)
        outputs, self.val_loss = _update_losses(outputs, self.val_loss)
        self.evaluator.process(data_samples=outputs, data_batch=data_batch)
        self.runner.call_hook("after_val_iter", batch_idx=idx, data_batch=data_batch, outputs=outputs)

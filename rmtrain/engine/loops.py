"""The training loop: iteration based, sized in epochs or iterations.

Iteration-based so that `--resume` continues mid-epoch at the exact batch: mmengine's loop
fast-forwards the (seeded) sampler past the batches already trained.
"""

import math

from mmengine.runner import IterBasedTrainLoop

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

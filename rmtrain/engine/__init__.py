"""Training engine: the mmengine Runner set-up, launchers, hooks, precision and schedules."""

from rmtrain.engine.hooks import GradientAccumulationStateHook
from rmtrain.engine.log_processor import RewardLogProcessor
from rmtrain.engine.loops import TrainLoop, ValLoop
from rmtrain.engine.precision import AutocastOptimWrapper
from rmtrain.engine.schedulers import LinearWarmupLR

__all__ = [
    "AutocastOptimWrapper",
    "LinearWarmupLR",
    "GradientAccumulationStateHook",
    "RewardLogProcessor",
    "TrainLoop",
    "ValLoop",
]

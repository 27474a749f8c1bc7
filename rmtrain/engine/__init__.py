"""Training engine: the mmengine Runner set-up, hooks, precision, and library workarounds."""

from rmtrain.engine.compat import LinearWarmupLR
from rmtrain.engine.hooks import GradientAccumulationStateHook
from rmtrain.engine.log_processor import RewardLogProcessor
from rmtrain.engine.loops import TrainLoop
from rmtrain.engine.precision import AutocastOptimWrapper

__all__ = ["AutocastOptimWrapper", "LinearWarmupLR", "GradientAccumulationStateHook", "RewardLogProcessor", "TrainLoop"]

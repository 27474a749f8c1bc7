"""The reward model and its losses."""

from rmtrain.model import internlm2  # noqa: F401  (registers InternLM2 with transformers' Auto classes)
from rmtrain.model.reward_model import RewardModel

__all__ = ["RewardModel"]

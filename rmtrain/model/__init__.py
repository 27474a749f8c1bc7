"""The reward model and its losses."""

from rmtrain.model.reward_model import RewardModel

__all__ = ["RewardModel"]

"""Evaluation of reward models: the preference metrics, validation during training, and `rmtrain eval`.

`RewardMetric` is what configs import (`val_evaluator = dict(type=RewardMetric)`); it and the
metrics are light. The `rmtrain eval` machinery (models, data files, report) loads on first use.
"""

from rmtrain.evaluation.metrics import distribution, preference_metrics
from rmtrain.evaluation.reward_metric import RewardMetric

__all__ = ["RewardMetric", "distribution", "evaluate_reward_model", "preference_metrics", "summary_table"]


def __getattr__(name):
    if name == "evaluate_reward_model":
        from rmtrain.evaluation.evaluate import evaluate_reward_model

        return evaluate_reward_model
    if name == "summary_table":
        from rmtrain.evaluation.report import summary_table

        return summary_table
    raise AttributeError(name)

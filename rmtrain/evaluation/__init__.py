"""`rmtrain eval`: a reward model's accuracy on a file of preference pairs, overall and per subset.

`RewardMetric`, `preference_metrics` and `distribution` live in `rmtrain.metrics` (below the
engine, which validates with them); they are re-exported here because configs import
`from rmtrain.evaluation import RewardMetric`. The `rmtrain eval` machinery loads on first use.
"""

from rmtrain.metrics import RewardMetric, distribution, preference_metrics

__all__ = ["RewardMetric", "distribution", "evaluate_reward_model", "preference_metrics", "summary_table"]


def __getattr__(name):
    if name == "evaluate_reward_model":
        from rmtrain.evaluation.evaluate import evaluate_reward_model

        return evaluate_reward_model
    if name == "summary_table":
        from rmtrain.evaluation.report import summary_table

        return summary_table
    raise AttributeError(name)

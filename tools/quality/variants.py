"""Named variants of the demo recipe for the rmtrain arm: each is a set of cfg-options, nothing else.

Every variant names the settings the recipe has changed since the harness began (head init, reward token,
penalty, head learning rate), so its meaning does not move when the recipe's defaults change; "recipe" is
the recipe as committed. A result is cached under the effective settings (`effective_settings`), so two
names for the same settings share runs.
"""

from __future__ import annotations

import inspect

XTUNER_REWARD_TOKEN = 16  # the demo recipe's reward token before this harness: '<empty_output>'

# name -> (what it tests, settings); a setting left out keeps the recipe's value.
VARIANTS: dict[str, tuple[str, dict]] = {
    "recipe": ("the demo recipe as committed", {}),
    "head_zeros": (
        "the recipe as shipped before: zero head, score at reward token 16, log-barrier penalty",
        {
            "value_head_init": "zeros",
            "reward_token_id": XTUNER_REWARD_TOKEN,
            "penalty_type": "log_barrier",
            "head_lr_mult": 1.0,
        },
    ),
    "head_normal": (
        "random normal(0, 0.02) head, score at reward token 16",
        {
            "value_head_init": "normal",
            "reward_token_id": XTUNER_REWARD_TOKEN,
            "penalty_type": "log_barrier",
            "head_lr_mult": 1.0,
        },
    ),
    "last_token": (
        "zero head, score at the template's last token (no reward token)",
        {"value_head_init": "zeros", "reward_token_id": None, "penalty_type": "log_barrier", "head_lr_mult": 1.0},
    ),
    "head_normal_last_token": (
        "random head and the template's last token",
        {"value_head_init": "normal", "reward_token_id": None, "penalty_type": "log_barrier", "head_lr_mult": 1.0},
    ),
    "head_normal_no_penalty": (
        "random head, reward token 16, no log-barrier penalty",
        {
            "value_head_init": "normal",
            "reward_token_id": XTUNER_REWARD_TOKEN,
            "penalty_type": "none",
            "head_lr_mult": 1.0,
        },
    ),
    "head_normal_last_token_no_penalty": (
        "random head, the template's last token, no log-barrier penalty, one learning rate (TRL's choices)",
        {"value_head_init": "normal", "reward_token_id": None, "penalty_type": "none", "head_lr_mult": 1.0},
    ),
    "head_lr_x10": (
        "random head, the template's last token, no penalty, the head at 10x the trunk's learning rate (the recipe)",
        {"value_head_init": "normal", "reward_token_id": None, "penalty_type": "none", "head_lr_mult": 10.0},
    ),
    "head_lr_x30": (
        "random head, the template's last token, no penalty, the head at 30x the trunk's learning rate",
        {"value_head_init": "normal", "reward_token_id": None, "penalty_type": "none", "head_lr_mult": 30.0},
    ),
    "head_zeros_no_clip": (
        "zero head, reward token 16, no gradient clipping",
        {
            "value_head_init": "zeros",
            "reward_token_id": XTUNER_REWARD_TOKEN,
            "max_norm": 1e9,
            "penalty_type": "log_barrier",
            "head_lr_mult": 1.0,
        },
    ),
    "head_zeros_focal": (
        "zero head, reward token 16, focal loss (XTuner's InternLM2 recipes)",
        {
            "value_head_init": "zeros",
            "reward_token_id": XTUNER_REWARD_TOKEN,
            "loss_type": "focal",
            "penalty_type": "log_barrier",
            "head_lr_mult": 1.0,
        },
    ),
}

# setting -> the cfg-options keys that carry it (the data set's reward token reaches the model by itself)
SETTING_KEYS = {
    "value_head_init": ("model.value_head_init",),
    "reward_token_id": ("train_dataloader.dataset.reward_token_id", "val_dataloader.dataset.reward_token_id"),
    "penalty_type": ("model.penalty_type",),
    "loss_type": ("model.loss_type",),
    "max_norm": ("optim_wrapper.clip_grad.max_norm",),
    "head_lr_mult": ("optim_wrapper.paramwise_cfg.custom_keys.v_head.lr_mult",),
}


def variant_options(name: str) -> dict:
    """The cfg-options of a variant (see VARIANTS)."""
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    options = {}
    for setting, value in VARIANTS[name][1].items():
        for key in SETTING_KEYS[setting]:
            options[key] = value
    return options


def _model_default(name: str):
    from rmtrain.model import RewardModel

    return inspect.signature(RewardModel.__init__).parameters[name].default


def effective_settings(cfg) -> dict:
    """What a loaded config trains with, the model's defaults filled in: the cache key of a run."""
    from rmtrain.config import scoring_inputs

    model = cfg.model
    dataset = cfg.train_dataloader.dataset
    inputs = scoring_inputs(cfg)
    settings = {
        "value_head_init": model.get("value_head_init", _model_default("value_head_init")),
        "reward_token_id": inputs.reward_token_id,
        "loss_type": model.get("loss_type", _model_default("loss_type")),
        "penalty_type": model.get("penalty_type", _model_default("penalty_type")),
        "penalty_weight": model.get("penalty_weight", _model_default("penalty_weight")),
        "max_norm": cfg.optim_wrapper.clip_grad.max_norm,
        "lr": cfg.optim_wrapper.optimizer.lr,
        "batch_size": cfg.train_dataloader.batch_size,
        "max_length": inputs.max_length,
        "records": dataset.dataset.get("num_pairs"),
    }
    # Only where it is set, so the runs cached before this setting existed keep their keys.
    custom_keys = (cfg.optim_wrapper.get("paramwise_cfg") or {}).get("custom_keys") or {}
    head_lr_mult = (custom_keys.get("v_head") or {}).get("lr_mult", 1.0)
    if head_lr_mult != 1.0:
        settings["head_lr_mult"] = head_lr_mult
    return settings

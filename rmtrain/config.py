"""Load a training config: resolve its name, apply --cfg-options (known keys only), check its shape.

Every verb that reads a config (train, convert, eval, check-data) loads it here. The inputs of the
scoring rule (reward token, max_length, packing) are set once, in the training data set's config,
as XTuner's configs set them; `load_config` derives the model's copies from there and
`scoring_inputs` reads them for everyone else.
"""

import difflib
import os
import sys
from dataclasses import dataclass

from mmengine.config import Config

from rmtrain.errors import ConfigError
from rmtrain.recipes import resolve_config
from rmtrain.scoring import reward_token_or_none

REQUIRED_KEYS = ("model", "train_dataloader", "optim_wrapper", "train_cfg")
# Top-level keys that rmtrain reads after loading. Every other top-level name (lr, batch_size, ...)
# is a settings variable whose value was already copied into the dicts above when the file ran.
ENGINE_KEYS = REQUIRED_KEYS + (
    "param_scheduler",
    "default_hooks",
    "custom_hooks",
    "log_processor",
    "visualizer",
    "env_cfg",
    "randomness",
    "log_level",
    "work_dir",
    "val_dataloader",
    "val_evaluator",
    "val_cfg",
)

# Top-level settings that `rmtrain train` reads itself (so `--cfg-options` may set them).
RUN_SETTINGS = ("sequence_parallel_size",)

# What the model takes from the training data set's config (see derive_model_settings).
DERIVED_MODEL_KEYS = ("model.reward_token_id", "model.use_varlen_attn")


def _paths_with_value(node, value, prefix=""):
    """Dotted paths under `node` whose value equals `value` (where a settings variable was used)."""
    if hasattr(node, "keys"):
        items = [(str(key), node[key]) for key in node.keys()]
    elif isinstance(node, (list, tuple)):
        items = [(str(index), item) for index, item in enumerate(node)]
    else:
        return [prefix] if type(node) is type(value) and node == value else []
    found = []
    for key, item in items:
        found += _paths_with_value(item, value, f"{prefix}.{key}" if prefix else key)
    return found


def _check_option_value(key: str, current, value) -> None:
    """A number, a boolean or None in the config stays one: `lr=abc` is an error here, not a traceback later.
    None is accepted everywhere: it is how a setting is switched off (e.g. reward_token_id=None)."""
    if value is None:
        return
    if isinstance(current, bool) or isinstance(value, bool):
        if isinstance(current, bool) != isinstance(value, bool) and current is not None:
            raise ConfigError(f"--cfg-options {key}={value!r}: expected True or False, as the config's {current!r}")
    elif isinstance(current, (int, float)) and not isinstance(value, (int, float)):
        raise ConfigError(f"--cfg-options {key}={value!r}: expected a number, as the config's {current!r}")


def _check_option_key(cfg: Config, key: str, value=None) -> None:
    """Raise unless every part of the dotted `key` names something the config already has (and `value` fits it)."""
    if key in DERIVED_MODEL_KEYS and key.split(".")[1] not in cfg.model:
        raise ConfigError(
            f"--cfg-options key '{key}': the model takes {key.split('.')[1]} from the data set; "
            f"set train_dataloader.dataset.{key.split('.')[1]} instead"
        )
    node = cfg
    walked = []
    for part in key.split("."):
        if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif hasattr(node, "keys") and part in node:
            node = node[part]
        else:
            known = list(node.keys()) if hasattr(node, "keys") else []
            close = difflib.get_close_matches(part, known, n=3)
            where = ".".join(walked) or "the top level"
            hint = f" Did you mean: {', '.join('.'.join([*walked, c]) for c in close)}?" if close else ""
            raise ConfigError(f"--cfg-options key '{key}': '{part}' is not a key of {where}.{hint}")
        walked.append(part)
    _check_option_value(key, node, value)
    top = key.split(".")[0]
    if top not in ENGINE_KEYS + RUN_SETTINGS:
        value = cfg[top]
        uses = [path for name in ENGINE_KEYS if name in cfg for path in _paths_with_value(cfg[name], value, name)]
        same_name = [path for path in uses if path.rsplit(".", 1)[-1] == top]
        # Small integers and booleans match unrelated keys by value; keep only same-named ones then.
        uses = same_name or ([] if isinstance(value, (bool, int)) else uses)
        hint = f" Override where it is used instead: {', '.join(uses[:6])}." if uses else ""
        raise ConfigError(
            f"--cfg-options key '{key}': '{top}' is a settings variable that the config already used "
            f"when it was read, so changing it would have no effect.{hint}"
        )


def check_config(cfg: Config, path) -> None:
    """Catch inconsistent settings before anything is built (nothing is downloaded or loaded here)."""
    missing = [key for key in REQUIRED_KEYS if key not in cfg]
    if missing:
        raise ConfigError(f"config {path} lacks {', '.join(missing)}")
    dataset = cfg.train_dataloader.get("dataset")
    if not isinstance(dataset, dict):
        raise ConfigError(f"config {path}: train_dataloader.dataset must be a dataset config dict")
    if dataset.get("is_dpo", True) or not dataset.get("is_reward", False):
        raise ConfigError(f"config {path}: the dataset must set is_dpo=False, is_reward=True")
    model_token = cfg.model.get("reward_token_id")
    data_token = dataset.get("reward_token_id")
    if "reward_token_id" in cfg.model and reward_token_or_none(model_token) != reward_token_or_none(data_token):
        raise ConfigError(
            f"config {path}: model.reward_token_id={model_token} differs from the dataset's reward_token_id={data_token}"
        )
    for key in ("max_length",):
        if not isinstance(dataset.get(key), int) or dataset[key] <= 0:
            raise ConfigError(f"config {path}: train_dataloader.dataset.{key} must be a positive integer")
    if not isinstance(cfg.train_dataloader.get("batch_size"), int) or cfg.train_dataloader.batch_size <= 0:
        raise ConfigError(f"config {path}: train_dataloader.batch_size must be a positive integer")
    # Packing is set in the data set; configs written for XTuner repeat it in the collate function and
    # the model, and a mismatch would fail late or silently run slow attention.
    collate = cfg.train_dataloader.get("collate_fn") or {}
    places = {"train_dataloader.dataset": dataset.get("use_varlen_attn", False)}
    for place, node in (("train_dataloader.collate_fn", collate), ("model", cfg.model)):
        if "use_varlen_attn" in node:
            places[place] = node["use_varlen_attn"]
    if len(set(places.values())) > 1:
        listed = ", ".join(f"{place}.use_varlen_attn={value}" for place, value in places.items())
        raise ConfigError(f"config {path}: use_varlen_attn must be the same everywhere ({listed})")


@dataclass(frozen=True)
class ScoringInputs:
    """What the scoring rule needs from a training config (see rmtrain.scoring)."""

    reward_token_id: int | None  # None: nothing is appended, the score is read at the last real token
    max_length: int  # tokens per sequence, the reward token included
    use_varlen_attn: bool  # packed padding-free rows instead of padded batches
    chat_template: str | None  # a named template or Jinja text; None: the tokenizer's own
    # Reference-conditioned (POLAR) models: a candidate is scored against a reference answer with
    # `rmtrain.scoring.encode_reference_sequence`, which keeps max_response_length tokens of each.
    max_response_length: int | None = None  # None: the chat rule (no reference)

    @property
    def is_reference(self) -> bool:
        return self.max_response_length is not None


def scoring_inputs(cfg: Config) -> ScoringInputs:
    """The scoring rule's inputs, from the one place a config sets them: `train_dataloader.dataset`."""
    dataset = cfg.train_dataloader.dataset
    return ScoringInputs(
        reward_token_id=reward_token_or_none(dataset.get("reward_token_id")),
        max_length=dataset.max_length,
        use_varlen_attn=bool(dataset.get("use_varlen_attn", False)),
        chat_template=dataset.get("chat_template"),
        max_response_length=dataset.get("max_response_length") if dataset.get("is_reference", False) else None,
    )


def derive_model_settings(cfg: Config) -> None:
    """Give the model the data set's reward token and packing switch (what the model needs of them)."""
    inputs = scoring_inputs(cfg)
    cfg.model["reward_token_id"] = inputs.reward_token_id
    cfg.model["use_varlen_attn"] = inputs.use_varlen_attn


def load_config(config: str, cfg_options: dict | None = None) -> Config:
    path = resolve_config(config)
    # A map function or model class in a module beside the config (or in the working folder) imports
    # without PYTHONPATH edits.
    for folder in (str(path.resolve().parent), os.getcwd()):
        if folder not in sys.path:
            sys.path.append(folder)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as error:  # a config is Python: show the user what broke and where
        raise ConfigError(f"cannot load config {path}: {type(error).__name__}: {error}") from error
    for key, value in (cfg_options or {}).items():
        _check_option_key(cfg, key, value)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    check_config(cfg, path)
    derive_model_settings(cfg)
    return cfg


# --- the settings an exported folder keeps as data -------------------------------------------------

EXPORT_SETTINGS_FILE = "rmtrain_config.json"  # beside rmtrain_config.py: what eval and serve read, never executed
EXPORT_SETTINGS_FORMAT = 1


def export_settings(cfg: Config, chat_template: str | None) -> dict:
    """What `rmtrain eval` and `rmtrain serve` need of the training config, as plain JSON data."""
    inputs = scoring_inputs(cfg)
    return dict(
        format=EXPORT_SETTINGS_FORMAT,
        training_config=os.path.basename(cfg.filename),
        max_length=inputs.max_length,
        reward_token_id=inputs.reward_token_id,
        chat_template=chat_template,
    )


def read_export_settings(folder: str) -> dict | None:
    """The folder's rmtrain_config.json (None when it has none); ConfigError when it is not the expected data."""
    import json

    path = os.path.join(folder, EXPORT_SETTINGS_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as file:
            settings = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(settings).__name__}")
    max_length = settings.get("max_length")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0:
        raise ConfigError(f"{path}, field 'max_length': expected a positive integer, found {max_length!r}")
    return settings

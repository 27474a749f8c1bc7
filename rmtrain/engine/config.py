"""Load a training config: resolve its name, apply --cfg-options (known keys only), check its shape."""

import difflib

from mmengine.config import Config

from rmtrain.errors import ConfigError
from rmtrain.recipes import resolve_config

REQUIRED_KEYS = ("model", "train_dataloader", "optim_wrapper", "train_cfg")


def _check_option_key(cfg: Config, key: str) -> None:
    """Raise unless every part of the dotted `key` names something the config already has."""
    node = cfg
    walked = []
    for part in key.split("."):
        if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            known = list(node.keys()) if isinstance(node, dict) else []
            close = difflib.get_close_matches(part, known, n=3)
            where = ".".join(walked) or "the top level"
            hint = f" Did you mean: {', '.join('.'.join([*walked, c]) for c in close)}?" if close else ""
            raise ConfigError(f"--cfg-options key '{key}': '{part}' is not a key of {where}.{hint}")
        walked.append(part)


def load_config(config: str, cfg_options: dict | None = None) -> Config:
    path = resolve_config(config)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as error:  # a config is Python: show the user what broke and where
        raise ConfigError(f"cannot load config {path}: {type(error).__name__}: {error}") from error
    for key in cfg_options or {}:
        _check_option_key(cfg, key)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    missing = [key for key in REQUIRED_KEYS if key not in cfg]
    if missing:
        raise ConfigError(f"config {path} lacks {', '.join(missing)}")
    return cfg

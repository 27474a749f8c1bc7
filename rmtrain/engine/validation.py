"""Validation during training: the config checks that keep a validation mistake from surfacing only
at the first validation, hours into a run.

A config validates when it sets `val_dataloader`, `val_evaluator` and `val_cfg` (mmengine's
ValLoop); `train_cfg.val_interval` says how often. Without them training runs as before.
"""

from mmengine.runner import ValLoop as MMEngineValLoop

from rmtrain.builder import resolve_type
from rmtrain.engine.loops import ValLoop
from rmtrain.errors import ConfigError
from rmtrain.metrics import RewardMetric

VALIDATION_KEYS = ("val_dataloader", "val_evaluator", "val_cfg")


def validation_keys_set(cfg) -> bool:
    """True when the config validates; ConfigError when it sets only some of the three keys (mmengine needs all)."""
    present = [key for key in VALIDATION_KEYS if cfg.get(key) is not None]
    if present and len(present) < len(VALIDATION_KEYS):
        missing = [key for key in VALIDATION_KEYS if key not in present]
        raise ConfigError(
            f"validation needs all of {', '.join(VALIDATION_KEYS)}: the config sets {', '.join(present)} "
            f"but not {', '.join(missing)}"
        )
    return bool(present)


def _reported_keys(evaluator) -> list[str] | None:
    """The metric keys a RewardMetric evaluator reports; None for evaluators rmtrain does not know."""
    metrics = evaluator if isinstance(evaluator, (list, tuple)) else evaluator.get("metrics", evaluator)
    metrics = metrics if isinstance(metrics, (list, tuple)) else [metrics]
    keys = []
    for metric in metrics:
        if not isinstance(metric, dict) or _metric_class(metric) is not RewardMetric:
            return None
        keys += RewardMetric.reported_keys(metric.get("prefix"))
    return keys


def _metric_class(metric: dict):
    try:
        return resolve_type(metric.get("type"))
    except (ValueError, ImportError, AttributeError):  # e.g. a name in mmengine's registry
        return None


def check_save_best(cfg, validates: bool) -> None:
    """`default_hooks.checkpoint.save_best` must name a metric that validation reports."""
    checkpoint = (cfg.get("default_hooks") or {}).get("checkpoint") or {}
    save_best = checkpoint.get("save_best")
    if not save_best:
        return
    if not validates:
        raise ConfigError(
            f"default_hooks.checkpoint.save_best={save_best!r} needs validation: set val_dataloader, "
            "val_evaluator and val_cfg, or remove save_best"
        )
    keys = _reported_keys(cfg.val_evaluator)
    for key in [save_best] if isinstance(save_best, str) else save_best:
        if keys is not None and key != "auto" and key not in keys:
            raise ConfigError(
                f"default_hooks.checkpoint.save_best={key!r} is not a validation metric; the evaluator reports "
                f"{', '.join(keys)}"
            )


def _split_settings(dataset) -> str:
    return ", ".join(f"{key}={dataset.get(key)!r}" for key in ("split", "val_split", "split_seed"))


def check_parts_do_not_overlap(train_dataset, val_dataset) -> None:
    """Train and val data cut from the same records must be the two parts of one split.

    Otherwise validation pairs are also trained on (a train data set without `val_split`), or the
    parts of two different splits overlap.
    """
    if not (isinstance(train_dataset, dict) and isinstance(val_dataset, dict)):
        return
    if val_dataset.get("split") != "val" or train_dataset.get("dataset") != val_dataset.get("dataset"):
        return
    same_split = all(train_dataset.get(key) == val_dataset.get(key) for key in ("val_split", "split_seed"))
    if train_dataset.get("split", "train") != "train" or not same_split:
        raise ConfigError(
            "the train and val data sets read the same records but are not the two parts of one split "
            f"(train: {_split_settings(train_dataset)}; val: {_split_settings(val_dataset)}): give both the same "
            "val_split and split_seed, with split='train' and split='val'"
        )


def check_validation_config(cfg) -> bool:
    """All validation checks, before any data or model is built; True when the config validates."""
    validates = validation_keys_set(cfg)
    check_save_best(cfg, validates)
    if validates:
        check_parts_do_not_overlap(cfg.train_dataloader.get("dataset"), cfg.val_dataloader.get("dataset"))
    return validates


def validation_loop_config(val_cfg: dict) -> dict:
    """`val_cfg` with mmengine's ValLoop (what configs name) run as rmtrain's, in the training precision."""
    val_cfg = dict(val_cfg)
    loop = val_cfg.get("type", "ValLoop")
    if loop in ("ValLoop", MMEngineValLoop):
        val_cfg["type"] = ValLoop
    return val_cfg

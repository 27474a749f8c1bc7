"""`--deepspeed NAME_OR_PATH`: train with DeepSpeed ZeRO through mmengine's FlexibleRunner.

The DeepSpeed JSON (a built-in one from configs/deepspeed/ or the user's own) leaves the settings
that the rmtrain config already has to "auto"; they are filled in from the config here:

  gradient_accumulation_steps     <- optim_wrapper.accumulative_counts
  train_micro_batch_size_per_gpu  <- train_dataloader.batch_size
  gradient_clipping               <- optim_wrapper.clip_grad.max_norm (0: none)
  bf16.enabled, fp16.enabled      <- optim_wrapper.dtype / mixed_precision, resolved for the device as
                                     in training without DeepSpeed (`rmtrain.engine.precision`)

A concrete JSON value that disagrees with the rmtrain config is replaced, with a warning, so that
one file (the rmtrain config) decides how the model trains.
"""

import json
import logging
from contextlib import contextmanager
from pathlib import Path

from rmtrain.errors import ConfigError
from rmtrain.recipes import shipped_config_dir

PREFIX = "deepspeed_"


def builtin_deepspeed_configs() -> dict[str, Path]:
    """'deepspeed_zero2' -> configs/deepspeed/deepspeed_zero2.json, for every shipped DeepSpeed JSON."""
    return {path.stem: path for path in sorted((shipped_config_dir() / "deepspeed").glob(f"{PREFIX}*.json"))}


def resolve_deepspeed_config(name_or_path: str) -> Path:
    """A JSON path as given, or a built-in name with or without its prefix ('zero2', 'deepspeed_zero2')."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    builtins = builtin_deepspeed_configs()
    name = name_or_path if name_or_path.startswith(PREFIX) else PREFIX + name_or_path
    if name in builtins:
        return builtins[name]
    if path.suffix == ".json" or "/" in name_or_path:
        raise ConfigError(f"--deepspeed {name_or_path}: no such DeepSpeed config file")
    names = ", ".join(name.removeprefix(PREFIX) for name in builtins)
    raise ConfigError(
        f"--deepspeed {name_or_path}: not a built-in DeepSpeed config ({names}, each also with the "
        f"'{PREFIX}' prefix) nor a JSON file"
    )


def read_deepspeed_config(name_or_path: str) -> dict:
    path = resolve_deepspeed_config(name_or_path)
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"--deepspeed {path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"--deepspeed {path}: the JSON must be an object")
    return config


def check_quantized_trunk_stage(name_or_path: str, cfg) -> None:
    """A 4/8-bit trunk (llm.quantization_config) cannot be partitioned by ZeRO-3: refused before any model loads."""
    llm = cfg.model.get("llm")
    if not (isinstance(llm, dict) and llm.get("quantization_config") is not None):
        return
    stage = (read_deepspeed_config(name_or_path).get("zero_optimization") or {}).get("stage", 0)
    if stage == 3:
        raise ConfigError(
            f"--deepspeed {name_or_path}: ZeRO-3 partitions every weight, which bitsandbytes' 4/8-bit trunk "
            "(model.llm.quantization_config, QLoRA) does not support; use deepspeed_zero2 (or zero1), or LoRA "
            "without quantization_config under ZeRO-3"
        )


def _warn(message: str) -> None:
    from mmengine.logging import print_log

    print_log(message, logger="current", level=logging.WARNING)


def _settle(config: dict, dotted_key: str, value) -> None:
    """Set `dotted_key` to the rmtrain config's `value`; warn if the JSON gave another value than "auto"."""
    *parents, last = dotted_key.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    given = node.get(last, "auto")
    if given != "auto" and given != value:
        _warn(f"DeepSpeed config sets {dotted_key}={given!r}, the rmtrain config gives {value!r}: using {value!r}")
    node[last] = value


def _auto_left(node, prefix="") -> list[str]:
    if isinstance(node, dict):
        return [key for name, item in node.items() for key in _auto_left(item, f"{prefix}{name}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


def _forward_dtype(cfg):
    import torch

    from rmtrain.engine.precision import resolve_precision

    precision = cfg.optim_wrapper.get("dtype", cfg.get("mixed_precision", "auto"))
    return resolve_precision(precision, "cuda" if torch.cuda.is_available() else "cpu")


def deepspeed_config(name_or_path: str, cfg, world_size: int) -> dict:
    """The DeepSpeed config for this run: the JSON with its "auto" values taken from `cfg`."""
    config = read_deepspeed_config(name_or_path)
    for section in ("optimizer", "scheduler"):
        if config.pop(section, None) is not None:
            _warn(f"DeepSpeed config has a '{section}' section; rmtrain uses the one of its config instead")
    optim = cfg.optim_wrapper
    accumulation = optim.get("accumulative_counts", 1)
    micro_batch = cfg.train_dataloader.batch_size
    _settle(config, "gradient_accumulation_steps", accumulation)
    _settle(config, "train_micro_batch_size_per_gpu", micro_batch)
    _settle(config, "gradient_clipping", float((optim.get("clip_grad") or {}).get("max_norm", 0.0)))
    dtype = str(_forward_dtype(cfg)).removeprefix("torch.")
    _settle(config, "bf16.enabled", dtype == "bfloat16")
    _settle(config, "fp16.enabled", dtype == "float16")
    if "train_batch_size" in config:
        _settle(config, "train_batch_size", micro_batch * accumulation * world_size)
    left = _auto_left(config)
    if left:
        raise ConfigError(f'--deepspeed {name_or_path}: rmtrain cannot fill in "auto" for {", ".join(left)}')
    return config


def deepspeed_runner_kwargs(name_or_path: str, cfg, world_size: int) -> dict:
    """FlexibleRunner arguments: a DeepSpeedStrategy and a DeepSpeedOptimWrapper around the config's optimizer."""
    from mmengine._strategy import DeepSpeedStrategy
    from mmengine._strategy.deepspeed import DeepSpeedOptimWrapper

    from rmtrain.compat import prepare_mmengine_deepspeed_strategy, quiet_deepspeed_collective_warnings

    prepare_mmengine_deepspeed_strategy()
    quiet_deepspeed_collective_warnings()
    optim_wrapper = dict(type=DeepSpeedOptimWrapper, optimizer=cfg.optim_wrapper.optimizer)
    for key in ("paramwise_cfg", "constructor"):  # how parameter groups are built still applies
        if key in cfg.optim_wrapper:
            optim_wrapper[key] = cfg.optim_wrapper[key]
    return dict(
        strategy=dict(type=DeepSpeedStrategy, config=deepspeed_config(name_or_path, cfg, world_size)),
        optim_wrapper=optim_wrapper,
    )


@contextmanager
def zero3_construction(config: dict):
    """Under ZeRO-3, build the model so that each rank holds only its partition of the weights.

    While an `HfDeepSpeedConfig` of a stage-3 config lives, transformers builds models
    (`from_pretrained`, `from_config`) under `deepspeed.zero.Init` and loads pretrained weights
    straight into the partitions, instead of every GPU holding the full model before DeepSpeed
    partitions it. Modules built otherwise (the value head, a trunk built from its class) are
    partitioned by DeepSpeed when it takes the model over; `match_partitioned_dtype` first gives them
    the dtype zero.Init gave the rest. Other stages: nothing changes.
    """
    if int((config.get("zero_optimization") or {}).get("stage", 0)) != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    hf_config = HfDeepSpeedConfig(config)  # transformers keeps a weak reference: hold it while building
    try:
        yield hf_config
    finally:
        unset_hf_deepspeed_config()


def match_partitioned_dtype(model) -> None:
    """Parameters built outside zero.Init, cast to the bf16/fp16 that zero.Init gave the partitioned ones.

    DeepSpeed's ZeRO-3 optimizer lays all of a rank's partitions in one buffer of a single dtype.
    """

    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        return
    dtype = partitioned[0].dtype
    for param in model.parameters():
        if not hasattr(param, "ds_id") and param.dtype != dtype:
            param.data = param.data.to(dtype)

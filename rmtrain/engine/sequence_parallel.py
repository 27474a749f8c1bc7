"""`sequence_parallel_size` (a top-level config setting, XTuner's name): checks, groups and data shards.

Checked before the data or the model is built: the trunk's attention heads and key/value heads and
the packed length must divide by it, and the world size must be a multiple of it. Then the groups
are made (`rmtrain.parallel.init_sequence_parallel`), and the data loaders' DefaultSampler is replaced
by SequenceParallelSampler, so that the ranks of a group read the same batches.
"""

import os

from mmengine.dataset import DefaultSampler

from rmtrain.builder import build
from rmtrain.data.packing import LengthGroupedSampler
from rmtrain.data.samplers import SequenceParallelSampler
from rmtrain.errors import ConfigError
from rmtrain.parallel import init_sequence_parallel, sequence_parallel_size

SETTING = "sequence_parallel_size"


def sequence_parallel_setting(cfg) -> int:
    size = cfg.get(SETTING, 1)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"{SETTING} must be a whole number >= 1, got {size!r}")
    return size


def _trunk_config(llm):
    """The trunk's Hugging Face config, read without loading weights (None where the config does not say)."""
    if not isinstance(llm, dict):
        return getattr(llm, "config", None)
    config = llm.get("config")
    if config is not None:
        return build(config) if isinstance(config, dict) else config
    path = llm.get("pretrained_model_name_or_path")
    if path is None or not os.path.isdir(str(path)):
        return None  # a hub name is not downloaded for a check: the attention checks the heads at the first step
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=bool(llm.get("trust_remote_code", False)))
    except (OSError, ValueError):  # an unreadable folder: the model load reports it
        return None


def check_sequence_parallel(cfg, size: int, world: int) -> None:
    """Every condition sequence parallelism needs, as a ConfigError naming the setting."""
    if size == 1:
        return
    config = _trunk_config((cfg.get("model") or {}).get("llm"))
    if config is not None:
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        for name, count in (("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
            if count % size:
                raise ConfigError(f"{SETTING}={size}: the model's {name}={count} must divide by it")
    dataset = cfg.train_dataloader.get("dataset") or {}
    packed_length = dataset.get("max_packed_length") if dataset.get("use_varlen_attn") else None
    if packed_length is not None and packed_length % size:
        raise ConfigError(f"{SETTING}={size}: max_packed_length={packed_length} must divide by it")
    if world % size:
        raise ConfigError(
            f"{SETTING}={size}: the world size {world} (processes) must be a multiple of it "
            f"(e.g. NPROC_PER_NODE={size * max(1, world // size)})"
        )


def sharded_by_group(dataloader: dict) -> dict:
    """A data loader config whose sampler shards by sequence-parallel group (unchanged without groups).

    Applied to the loaders handed to the Runner, not to the config: the config is saved as text.
    """
    if sequence_parallel_size() == 1:
        return dataloader
    sampler = dict(dataloader.get("sampler") or {})
    kind = sampler.get("type")
    if kind in (DefaultSampler, "DefaultSampler", SequenceParallelSampler):
        sampler["type"] = SequenceParallelSampler
    elif kind is not LengthGroupedSampler:  # which shards by data-parallel group itself
        raise ConfigError(
            f"{SETTING} > 1 needs DefaultSampler or LengthGroupedSampler in the data loaders, got {kind!r}"
        )
    return dict(dataloader, sampler=sampler)


def setup_sequence_parallel(cfg, world: int) -> None:
    """Check the setting, then make the groups (before the model is built: it reads them)."""
    size = sequence_parallel_setting(cfg)
    check_sequence_parallel(cfg, size, world)
    init_sequence_parallel(size)

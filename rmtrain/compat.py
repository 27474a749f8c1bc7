"""Workarounds for the libraries rmtrain runs on, each gated on the library versions that need it.

Nothing else in rmtrain works around a library. Every workaround below is declared as a
`Workaround` naming the libraries and the version ranges known to need it; `needed()` checks the
installed versions, so a workaround switches itself off once a fixed release is installed, and
tests/test_compat.py fails with the name of the workaround to delete.

Imports of torch, mmengine, transformers and deepspeed happen inside the functions: importing
this module stays cheap, and a library that is not installed is never imported here.
"""

import logging
import warnings
from dataclasses import dataclass
from functools import cache
from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import Version


@cache
def installed_version(library: str) -> Version | None:
    """The installed release of `library` without its local part ('2.13.0+cpu' -> 2.13.0); None if absent."""
    try:
        return Version(Version(metadata.version(library)).public)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Workaround:
    """A fix for a library's behaviour, needed while every library in `needs` is in its version range."""

    name: str
    needs: tuple[tuple[str, str], ...]  # (library, version specifier), e.g. (("mmengine", "<=0.10.7"),)
    why: str

    def needed(self) -> bool:
        for library, versions in self.needs:
            version = installed_version(library)
            if version is None or version not in SpecifierSet(versions):
                return False
        return True


MMENGINE_CHECKPOINT_LOADER = Workaround(
    "mmengine_checkpoint_loader",
    (("torch", ">=2.6"), ("mmengine", "<=0.10.7")),
    "torch.load defaults to weights_only=True since torch 2.6, and mmengine's checkpoint loader calls it "
    "without arguments on files that hold mmengine objects (HistoryBuffer, numpy scalars): resume and "
    "load_from fail. rmtrain's own checkpoint reader is registered for mmengine's local files instead.",
)
MMENGINE_CPU_DDP = Workaround(
    "mmengine_cpu_ddp",
    (("mmengine", "<=0.10.7"),),
    "mmengine's DDP wrapper passes device_ids=[LOCAL_RANK] even when the model is on the CPU, where "
    "DistributedDataParallel needs device_ids=None.",
)
MMENGINE_DEEPSPEED_ONEBIT = Workaround(
    "mmengine_deepspeed_onebit",
    (("mmengine", "<=0.10.7"), ("deepspeed", ">=0.19.7")),
    "mmengine's DeepSpeedStrategy registers DeepSpeed's optimizers by importing "
    "deepspeed.runtime.fp16.onebit, which deepspeed 0.19.7 removed.",
)
MMENGINE_FLEXIBLE_RUNNER_ITER = Workaround(
    "mmengine_flexible_runner_iter",
    (("mmengine", "<=0.10.7"),),
    "FlexibleRunner.save_checkpoint overwrites meta['iter'] with runner.iter + 1: a best checkpoint re-saved "
    "after validation claims one iteration more than was trained, and a DeepSpeed resume skips a batch.",
)
MMENGINE_DEEPSPEED_CHECKPOINT_CALLBACKS = Workaround(
    "mmengine_deepspeed_checkpoint_callbacks",
    (("mmengine", "<=0.10.7"),),
    "DeepSpeedStrategy.save_checkpoint and resume ignore the callback FlexibleRunner gives them: the hooks' "
    "before_save_checkpoint and after_load_checkpoint never see a DeepSpeed checkpoint, so rmtrain's checkpoint "
    "hook could not write mmengine's log history as plain (weights-only loadable) data there.",
)
DEEPSPEED_COLLECTIVE_WARNINGS = Workaround(
    "deepspeed_collective_warnings",
    (("torch", ">=2.13"), ("deepspeed", "<=0.19.8")),
    "DeepSpeed ZeRO calls all_gather_into_tensor / reduce_scatter_tensor, deprecated in torch 2.13, in "
    "every step: the FutureWarning repeats through the whole log of every rank.",
)
TRANSFORMERS_GGUF_SAVE = Workaround(
    "transformers_gguf_save",
    (("transformers", ">=5.0"),),
    "A model loaded with from_pretrained(gguf_file=...) keeps a GGUF quantizer although its tensors are "
    "dequantized, and save_pretrained refuses it ('quantized with gguf and is not serializable').",
)
DEEPSPEED_CPU_ACCELERATOR_NOTICE = Workaround(
    "deepspeed_cpu_accelerator_notice",
    (("mmengine", "<=0.10.7"), ("deepspeed", "<=0.19.8")),
    "mmengine.runner imports deepspeed at import time (mmengine/_strategy/deepspeed.py), and on a machine "
    "without CUDA DeepSpeed then warns 'Setting accelerator to CPU. If you have GPU ...' at every command "
    "start, also for commands that never use DeepSpeed.",
)
MMENGINE_DEPRECATION_NOTICES = Workaround(
    "mmengine_deprecation_notices",
    (("mmengine", "<=0.10.7"),),
    "mmengine's own CheckpointHook builds a FileClient and warns that FileClient and HardDiskBackend will "
    "be deprecated: notices about mmengine's internals, nothing a user can change.",
)

WORKAROUNDS = (
    MMENGINE_CHECKPOINT_LOADER,
    MMENGINE_CPU_DDP,
    MMENGINE_DEEPSPEED_ONEBIT,
    MMENGINE_FLEXIBLE_RUNNER_ITER,
    MMENGINE_DEEPSPEED_CHECKPOINT_CALLBACKS,
    DEEPSPEED_COLLECTIVE_WARNINGS,
    TRANSFORMERS_GGUF_SAVE,
    DEEPSPEED_CPU_ACCELERATOR_NOTICE,
    MMENGINE_DEPRECATION_NOTICES,
)


# --- console notices -------------------------------------------------------------------------------


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith(self.starts)


def quiet_deepspeed_accelerator_notice() -> None:
    """Drop DeepSpeed's 'Setting accelerator to CPU' warning (its logger is made before deepspeed is imported)."""
    if DEEPSPEED_CPU_ACCELERATOR_NOTICE.needed():
        # DeepSpeed's LoggerFactory configures logging.getLogger("DeepSpeed") and keeps its filters.
        logging.getLogger("DeepSpeed").addFilter(_DropMessages(("Setting accelerator to CPU",)))


def mmengine_deprecation_notice_starts() -> tuple[str, ...]:
    """Starts of mmengine's notices about its own internals, for the console filter (empty once fixed)."""
    if not MMENGINE_DEPRECATION_NOTICES.needed():
        return ()
    return ('"FileClient" will be deprecated', '"HardDiskBackend" is the alias of "LocalBackend"')


# --- mmengine ------------------------------------------------------------------------------------


def register_checkpoint_reader(read) -> None:
    """mmengine's resume and load_from read local checkpoint files with `read(filename, map_location)`.

    Registered with every mmengine version: rmtrain decides what a checkpoint may unpickle
    (rmtrain.checkpoints), whatever mmengine's default; MMENGINE_CHECKPOINT_LOADER says why the
    default also fails on mmengine <= 0.10.7.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes="", force=True)(read)


def ddp_wrapper_config(on_gpu: bool) -> dict:
    """`model_wrapper_cfg` for a multi-process run: DDP, with no device ids when the model is on the CPU."""
    config = dict(type="MMDistributedDataParallel")
    if not on_gpu and MMENGINE_CPU_DDP.needed():
        config["device_ids"] = None
    return config


# (module, class) pairs that mmengine <= 0.10.7 registers as DeepSpeed optimizers.
_DEEPSPEED_OPTIMIZERS = (
    ("deepspeed.ops.adam", "DeepSpeedCPUAdam"),
    ("deepspeed.ops.adam", "FusedAdam"),
    ("deepspeed.ops.lamb", "FusedLamb"),
    ("deepspeed.runtime.fp16.onebit", "OnebitAdam"),
    ("deepspeed.runtime.fp16.onebit", "OnebitLamb"),
    ("deepspeed.runtime.fp16.onebit", "ZeroOneAdam"),
)


def _register_existing_deepspeed_optimizers() -> list[str]:
    import importlib

    from mmengine.registry import OPTIMIZERS

    registered = []
    for module_name, class_name in _DEEPSPEED_OPTIMIZERS:
        try:
            optimizer = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        if class_name not in OPTIMIZERS.module_dict:
            OPTIMIZERS.register_module(module=optimizer)
        registered.append(class_name)
    return registered


def prepare_mmengine_deepspeed_strategy() -> None:
    """Let mmengine's DeepSpeedStrategy start: register only the DeepSpeed optimizers that still exist."""
    if not MMENGINE_DEEPSPEED_ONEBIT.needed():
        return
    from mmengine._strategy import deepspeed as mmengine_deepspeed

    mmengine_deepspeed.register_deepspeed_optimizers = _register_existing_deepspeed_optimizers


def quiet_deepspeed_collective_warnings() -> None:
    """Hide torch's deprecation warning for the two collectives DeepSpeed ZeRO calls every step."""
    if not DEEPSPEED_COLLECTIVE_WARNINGS.needed():
        return
    for name in ("all_gather_into_tensor", "reduce_scatter_tensor"):
        warnings.filterwarnings("ignore", message=f"`torch.distributed.{name}` is deprecated", category=FutureWarning)


def flexible_runner_class():
    """mmengine's FlexibleRunner, or a subclass whose checkpoints record the iteration CheckpointHook gives
    and whose DeepSpeed checkpoints pass through the hooks' before_save_checkpoint / after_load_checkpoint."""
    from mmengine.runner import FlexibleRunner

    fix_iter = MMENGINE_FLEXIBLE_RUNNER_ITER.needed()
    call_hooks = MMENGINE_DEEPSPEED_CHECKPOINT_CALLBACKS.needed()
    if not (fix_iter or call_hooks):
        return FlexibleRunner
    return _checkpoint_fixing_flexible_runner(fix_iter, call_hooks)


@cache
def _checkpoint_fixing_flexible_runner(fix_iter: bool, call_hooks: bool):
    from mmengine.runner import FlexibleRunner

    class CheckpointFixingFlexibleRunner(FlexibleRunner):
        """FlexibleRunner whose checkpoints record the caller's meta['iter'] (as Runner does) and reach the hooks."""

        def save_checkpoint(self, out_dir, filename, *args, meta=None, **kwargs):
            given_iter = (meta or {}).get("iter")
            strategy_save = self.strategy.save_checkpoint

            def save_fixed(*save_args, extra_ckpt=None, callback=None, **save_kwargs):
                if fix_iter and given_iter is not None:
                    extra_ckpt["meta"]["iter"] = given_iter
                if call_hooks and callback is not None:
                    callback(extra_ckpt)
                return strategy_save(*save_args, extra_ckpt=extra_ckpt, callback=callback, **save_kwargs)

            self.strategy.save_checkpoint = save_fixed  # for this save only
            try:
                super().save_checkpoint(out_dir, filename, *args, meta=meta, **kwargs)
            finally:
                del self.strategy.save_checkpoint

        def resume(self, filename, *args, **kwargs):
            if not call_hooks:
                return super().resume(filename, *args, **kwargs)
            strategy_resume = self.strategy.resume

            def resume_calling_back(*resume_args, callback=None, **resume_kwargs):
                checkpoint = strategy_resume(*resume_args, callback=callback, **resume_kwargs)
                if callback is not None:
                    callback(checkpoint)
                return checkpoint

            self.strategy.resume = resume_calling_back  # for this resume only
            try:
                return super().resume(filename, *args, **kwargs)
            finally:
                del self.strategy.resume

    return CheckpointFixingFlexibleRunner


# --- transformers --------------------------------------------------------------------------------


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in backward (non-reentrant, which works with frozen inputs and DDP).

    Not a bug but a rename: transformers 5 calls it `activation_checkpointing_enable` (the old name
    warns and goes in v6); transformers 4 has only `gradient_checkpointing_enable`.
    """
    kwargs = {"use_reentrant": False}
    if installed_version("transformers") >= Version("5.0"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def clear_gguf_quantizer(model) -> None:
    """Let `save_pretrained` write a model that was loaded from a GGUF file, as a plain checkpoint.

    Clearing only the quantizer is not enough: the GGUF `quantization_config` would be saved into
    config.json and the folder would reload with a GGUF quantizer again. The weights are ordinary
    float tensors, so both are dropped.
    """
    if not TRANSFORMERS_GGUF_SAVE.needed():
        return
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config

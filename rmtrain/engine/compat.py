"""Workarounds for the libraries rmtrain runs on, each with the version that needs it.

Nothing else in rmtrain works around a library bug; add new ones here with their version.
"""

import importlib
import os
import pickle
import warnings

import torch
from mmengine.optim import LinearLR
from mmengine.runner import FlexibleRunner
from mmengine.runner.checkpoint import CheckpointLoader


def load_checkpoint_file(filename: str, trusted_dirs: list[str], map_location="cpu"):
    """torch.load for mmengine checkpoints, safe by default.

    Needed with torch >= 2.6 and mmengine <= 0.10.7: torch.load defaults to weights_only=True, and
    mmengine checkpoints hold HistoryBuffer and numpy objects that the safe loader refuses (an
    allow-list would have to admit `getattr`, which defeats it). A file is first loaded safely;
    only a file inside one of `trusted_dirs` (where rmtrain's own runs write, or a checkpoint the
    user named explicitly) is loaded in full when that fails.
    """
    path = os.path.realpath(os.path.expanduser(filename))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{filename} can not be found.")
    try:
        # mmap: tensors are read from the file as they are used, not all copied into memory first
        return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        roots = [os.path.realpath(directory) for directory in trusted_dirs]
        if not any(os.path.commonpath([path, root]) == root for root in roots):
            raise RuntimeError(
                f"{filename} holds Python objects beyond tensors and lies outside {', '.join(trusted_dirs)}; "
                "rmtrain loads such checkpoints only from where its own runs wrote them"
            ) from None
        return torch.load(path, map_location=map_location, weights_only=False, mmap=True)


def allow_trusted_checkpoint_loading(trusted_dirs: list[str]) -> None:
    """Let mmengine's resume read the checkpoints under `trusted_dirs` (see load_checkpoint_file)."""
    trusted_dirs = list(trusted_dirs)
    CheckpointLoader.register_scheme(prefixes="", force=True)(
        lambda filename, map_location: load_checkpoint_file(filename, trusted_dirs, map_location)
    )


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in backward (non-reentrant, which works with frozen inputs and DDP).

    transformers 5.x renamed `gradient_checkpointing_enable` to `activation_checkpointing_enable`
    (the old name warns and goes in v6); transformers 4.x has only the old one.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def clear_gguf_quantizer(model) -> None:
    """Let `save_pretrained` write a model that was loaded from a GGUF file, as a plain checkpoint.

    Needed with transformers 5.x (seen with 5.23): `from_pretrained(..., gguf_file=...)` dequantizes
    every tensor but keeps a GGUF `hf_quantizer`, and `save_pretrained` refuses with "The model is
    quantized with gguf and is not serializable". Clearing only the quantizer is not enough: the
    GGUF `quantization_config` would be saved into config.json and the folder would reload with a
    GGUF quantizer again. The weights are ordinary float tensors, so both are dropped.
    """
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


class LinearWarmupLR(LinearLR):
    """LinearLR that really reaches `end_factor` by the end of its range.

    mmengine 0.10.7's LinearLR updates for the last time at step begin+N-1 with factor
    start + (end - start) * (N - 1) / N, one step short of `end_factor`; the chained cosine after it
    keeps the shortfall for the rest of the run. With a warm-up that rounds to one iteration (small
    data), the whole run trains at lr * start_factor. Here the factor goes from `start_factor` at the
    first step to `end_factor` at the last one (a one-step warm-up is no warm-up), and a warm-up that
    rounds to zero iterations becomes one instead of mmengine's "end should be larger than begin".
    """

    @classmethod
    def build_iter_from_epoch(cls, *args, begin=0, end=None, by_epoch=True, epoch_length=None, **kwargs):
        begin_iter = int(begin * epoch_length)
        end_iter = max(int(end * epoch_length), begin_iter + 1)
        return cls(*args, begin=begin_iter, end=end_iter, by_epoch=False, **kwargs)

    def _get_value(self):
        steps = self.end - self.begin
        progress = 1.0 if steps <= 1 else min(self.last_step, steps - 1) / (steps - 1)
        factor = self.start_factor + (self.end_factor - self.start_factor) * progress
        return [base_value * factor for base_value in self.base_values]


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


def patch_mmengine_deepspeed_strategy() -> None:
    """Let mmengine's DeepSpeedStrategy start with deepspeed >= 0.19.7.

    mmengine <= 0.10.7 registers DeepSpeed's optimizers when a DeepSpeedStrategy is built, importing
    `deepspeed.runtime.fp16.onebit`, which deepspeed 0.19.7 removed (1-bit Adam/LAMB, 0/1 Adam):
    "No module named 'deepspeed.runtime.fp16.onebit'". Registered instead: those that still exist.
    """
    from mmengine._strategy import deepspeed as mmengine_deepspeed

    mmengine_deepspeed.register_deepspeed_optimizers = _register_existing_deepspeed_optimizers


def quiet_deepspeed_collective_warnings() -> None:
    """Hide the FutureWarning of torch 2.13 for the collectives that DeepSpeed 0.19.8 ZeRO still calls.

    `all_gather_into_tensor` and `reduce_scatter_tensor` are deprecated in torch; DeepSpeed's ZeRO-2/3
    call them in every step, repeating the warning through the whole log of every rank.
    """
    for name in ("all_gather_into_tensor", "reduce_scatter_tensor"):
        warnings.filterwarnings("ignore", message=f"`torch.distributed.{name}` is deprecated", category=FutureWarning)


class CheckpointIterFlexibleRunner(FlexibleRunner):
    """FlexibleRunner whose checkpoints record the iteration that CheckpointHook gives them.

    Needed with mmengine <= 0.10.7: FlexibleRunner.save_checkpoint overwrites meta['iter'] with
    runner.iter + 1 (Runner keeps the caller's value). After a validation with a new best score,
    CheckpointHook saves the latest checkpoint again, when runner.iter already counts the finished
    iteration: that checkpoint claimed one iteration more than was trained, and a DeepSpeed run
    resumed from it skipped a batch.
    """

    def save_checkpoint(self, out_dir, filename, *args, meta=None, **kwargs):
        given_iter = (meta or {}).get("iter")
        strategy_save = self.strategy.save_checkpoint

        def save_with_given_iter(*save_args, extra_ckpt=None, **save_kwargs):
            if given_iter is not None:
                extra_ckpt["meta"]["iter"] = given_iter
            return strategy_save(*save_args, extra_ckpt=extra_ckpt, **save_kwargs)

        self.strategy.save_checkpoint = save_with_given_iter  # for this save only
        try:
            super().save_checkpoint(out_dir, filename, *args, meta=meta, **kwargs)
        finally:
            del self.strategy.save_checkpoint

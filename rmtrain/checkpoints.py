"""Checkpoints: every read, find and trust decision, for `iter_N.pth` files and DeepSpeed folders.

A run writes `iter_N.pth` checkpoints into its work dir (rmtrain's AtomicCheckpointHook, which takes
mmengine's CheckpointHook settings), or, with `--deepspeed`, `iter_N.pth/` folders (DeepSpeed's
save_checkpoint through mmengine's FlexibleRunner), each under a temporary name first, and a
`last_checkpoint` pointer to the newest complete one. Training (`--resume`), `rmtrain convert` and
`rmtrain eval` read them only through this module:

- what a path is: `is_checkpoint`, `is_deepspeed_checkpoint`, `is_complete_checkpoint`;
- where a run resumes: `find_resume_checkpoint`, and the seed it started with: `checkpoint_seed`;
- what is unpickled: `load_checkpoint_file` loads tensors and plain data only (torch's weights-only
  loader); a file that needs more is refused unless the user passes `trust=True` (--trust-checkpoint);
- what is written: `plain_message_hub` (mmengine's log history as tensors, so checkpoints need no
  full unpickle), `commit_checkpoint` and `write_resume_pointer` (temporary name, fsync, rename);
- the trained weights: `read_model_state_dict` and `load_model_weights`.
- LoRA checkpoints: which kind a state dict is (`check_adapter_kind`) and which frozen base model
  its adapters belong to (`base_model_identity`, `check_same_base_model`).
"""

import hashlib
import logging
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path

from rmtrain.compat import register_checkpoint_reader
from rmtrain.errors import CheckpointError

RESUME_POINTER = "last_checkpoint"  # rewritten (atomically) after each complete save
VALUE_HEAD_KEY = "v_head.weight"
PARTIAL_SUFFIX = ".tmp"  # iter_N.pth.tmp (file or DeepSpeed folder) while it is being written
TRUST_FLAG = "--trust-checkpoint"
_HISTORY_BUFFER = "rmtrain_history_buffer"  # tag of an mmengine HistoryBuffer saved as plain data
_CHECKPOINT_NAME = re.compile(r"^iter_(\d+)\.pth$")
ADAPTER_MARK = ".lora_"  # in the key of every LoRA adapter weight (PEFT's lora_A, lora_B, ...)
BASE_IDENTITY_KEY = "base_identity.encoded"  # the frozen base model of a LoRA checkpoint (JSON bytes)
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_SAMPLED_CHUNKS = 16  # evenly spaced pieces of each weight file that its fingerprint reads
_CHUNK_BYTES = 1 << 16


# --- what a path is --------------------------------------------------------------------------------


def _model_states_files(path: str) -> list[Path]:
    """mp_rank_00_model_states.pt (ZeRO-1/2) or zero_pp_rank_<r>_mp_rank_00_model_states.pt (ZeRO-3)."""
    folder = Path(path)
    return sorted(folder.glob("*model_states.pt")) if folder.is_dir() else []


def is_deepspeed_checkpoint(path: str) -> bool:
    """The iter_N.pth/ folder that DeepSpeed's save_checkpoint writes (through mmengine's FlexibleRunner)."""
    return bool(_model_states_files(path))


def is_checkpoint(path: str) -> bool:
    """An iter_N.pth file, or the iter_N.pth/ folder that a DeepSpeed run writes."""
    return os.path.isfile(path) or is_deepspeed_checkpoint(path)


def is_complete_checkpoint(path: str) -> bool:
    """A checkpoint whose write finished: a zip file with its central directory (torch.save's format), or a
    DeepSpeed folder whose every file is one. A killed write leaves neither (and would be under a .tmp name)."""
    if os.path.isdir(path):
        if not _model_states_files(path):
            return False
        files = sorted(Path(path).glob("*.pt"))
    else:
        files = [Path(path)]
    for file in files:
        try:
            with zipfile.ZipFile(file) as archive:
                if not any(name.endswith("data.pkl") for name in archive.namelist()):
                    return False
        except (OSError, zipfile.BadZipFile):
            return False
    return True


# --- what is unpickled -------------------------------------------------------------------------------


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _refused_globals(path: str) -> list[str]:
    """The types and functions a torch.save file refers to beyond what the weights-only loader admits."""
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint at all: reported as unreadable
        return []


def _deepspeed_safe_globals() -> list:
    """What DeepSpeed's own checkpoint files hold besides tensors and plain data (its config and version types)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def load_checkpoint_file(filename: str, map_location="cpu", trust: bool = False, deepspeed: bool = False):
    """torch.load with the weights-only loader: tensors, numbers, strings and containers, nothing that runs code.

    Checkpoints rmtrain writes need nothing more (`plain_message_hub`); DeepSpeed's files need a few of its
    own plain classes (`deepspeed=True`). Any other file is refused with a CheckpointError naming it and what
    it refers to; `trust=True` (the user's --trust-checkpoint) loads it in full, with a warning.
    """
    import torch

    path = os.path.realpath(os.path.expanduser(filename))
    if not os.path.isfile(path):
        raise CheckpointError(f"{filename}: no such checkpoint file")
    if trust:
        _warn(f"{filename}: loading with a full unpickle ({TRUST_FLAG}); this runs any code the file contains")
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as error:
            raise CheckpointError(f"{filename} is not a readable checkpoint: {_first_line(error)}") from None
    allowed = _deepspeed_safe_globals() if deepspeed else []
    try:
        with torch.serialization.safe_globals(allowed):
            # mmap: tensors are read from the file as they are used, not all copied into memory first
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        refused = _refused_globals(path)
        if refused:
            raise CheckpointError(
                f"{filename} refers to {', '.join(refused[:6])}{' ...' if len(refused) > 6 else ''}, which only "
                f"a full unpickle (able to run any code) would load; refused. If you trust this file, pass "
                f"{TRUST_FLAG}"
            ) from None
        raise CheckpointError(f"{filename} is not a readable checkpoint: {_first_line(error)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{filename} is not a readable checkpoint (empty, truncated or not written by torch.save): "
            f"{_first_line(error)}"
        ) from None


def check_deepspeed_folder(path: str, trust: bool = False) -> None:
    """Every file of a DeepSpeed checkpoint folder loads with the weights-only loader (or the user trusts it).

    DeepSpeed reads its files with a full unpickle; a file that passes this check refers to nothing
    beyond tensors, plain data and DeepSpeed's own plain classes, so that read runs no foreign code.
    """
    if trust:
        _warn(f"{path}: DeepSpeed folder loaded without checking its files ({TRUST_FLAG})")
        return
    for file in sorted(Path(path).glob("*.pt")):
        load_checkpoint_file(str(file), deepspeed=True)


def use_safe_reader_for_mmengine(trust: bool = False) -> None:
    """mmengine's resume and load_from read local files through load_checkpoint_file (with the user's trust)."""
    register_checkpoint_reader(lambda filename, map_location: load_checkpoint_file(filename, map_location, trust))


def _warn(message: str) -> None:
    from mmengine.logging import print_log

    print_log(message, logger="current", level=logging.WARNING)


# --- what is written ---------------------------------------------------------------------------------


def plain_message_hub(state: dict) -> dict:
    """mmengine's MessageHub state with each HistoryBuffer as tensors and numpy numbers as Python numbers.

    A HistoryBuffer pickles references to its methods, which only a full unpickle can load; in this form
    a checkpoint is tensors and plain data. `restore_message_hub` turns it back.
    """
    import numpy as np
    import torch

    def plain(value):
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(plain(item) for item in value)
        return value

    log_scalars = {}
    for key, buffer in state.get("log_scalars", {}).items():
        history, counts = buffer.data
        log_scalars[key] = {
            _HISTORY_BUFFER: dict(
                max_length=buffer.max_length,
                log_history=torch.from_numpy(np.array(history)),
                count_history=torch.from_numpy(np.array(counts)),
            )
        }
    return dict(state, log_scalars=log_scalars, runtime_info=plain(state.get("runtime_info", {})))


def restore_message_hub(state: dict) -> dict:
    """The inverse of `plain_message_hub`: HistoryBuffers again, as MessageHub.load_state_dict expects."""
    from mmengine.logging import HistoryBuffer

    log_scalars = {}
    for key, value in state.get("log_scalars", {}).items():
        if isinstance(value, dict) and _HISTORY_BUFFER in value:
            saved = value[_HISTORY_BUFFER]
            value = HistoryBuffer(
                saved["log_history"].numpy(), saved["count_history"].numpy(), max_length=saved["max_length"]
            )
        log_scalars[key] = value
    return dict(state, log_scalars=log_scalars)


def _fsync(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_checkpoint(path: str) -> None:
    """Delete a checkpoint file or DeepSpeed folder (absent is fine)."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def commit_checkpoint(partial: str, final: str) -> None:
    """Make a completely written `partial` (file or DeepSpeed folder) durable and give it its `final` name."""
    files = [os.path.join(partial, name) for name in sorted(os.listdir(partial))] if os.path.isdir(partial) else []
    for file in files + [partial]:
        _fsync(file)
    remove_checkpoint(final)  # a folder cannot be renamed over; a file is replaced in one step anyway
    os.replace(partial, final)
    _fsync(os.path.dirname(os.path.abspath(final)))


def write_resume_pointer(work_dir: str, checkpoint: str) -> None:
    """`last_checkpoint` names `checkpoint`: written to a temporary file, fsynced and renamed over the old one."""
    pointer = os.path.join(work_dir, RESUME_POINTER)
    partial = pointer + PARTIAL_SUFFIX
    with open(partial, "w") as file:
        file.write(checkpoint)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, pointer)
    _fsync(os.path.abspath(work_dir))


# --- resume ------------------------------------------------------------------------------------------


def _saved_iteration(path: str) -> int | None:
    match = _CHECKPOINT_NAME.match(os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def find_resume_checkpoint(resume: str | None, work_dir: str) -> str | None:
    """--resume PATH -> PATH; --resume auto -> the newest complete iter_N.pth in the work dir (None if it has none).

    The `last_checkpoint` pointer is one candidate, not the authority: it may be stale or name a file
    that is gone. A work dir that holds checkpoints (or a pointer) of which none is complete is an error,
    never a silent restart from iteration 0.
    """
    if resume is None:
        return None
    if resume != "auto":
        if not is_checkpoint(resume):
            raise CheckpointError(f"--resume {resume}: no such checkpoint file (or DeepSpeed checkpoint folder)")
        return resume
    candidates = {str(path) for path in Path(work_dir).glob("iter_*.pth") if _saved_iteration(str(path)) is not None}
    pointer = os.path.join(work_dir, RESUME_POINTER)
    named = Path(pointer).read_text().strip() if os.path.isfile(pointer) else None
    if named and _saved_iteration(named) is not None and os.path.exists(named):
        candidates.add(named)
    complete = [path for path in candidates if is_complete_checkpoint(path)]
    if complete:
        return max(complete, key=lambda path: (_saved_iteration(path), path == named))
    if candidates or named:
        found = sorted(candidates, key=_saved_iteration) or [f"{RESUME_POINTER} naming the missing {named}"]
        raise CheckpointError(
            f"--resume auto: {work_dir} holds checkpoints but none is complete ({', '.join(found)}); "
            "refusing to start over from iteration 0. Give --resume PATH, or remove them to start afresh"
        )
    return None


def deepspeed_checkpoint_meta(path: str, trust: bool = False) -> dict:
    """mmengine's `meta` (iter, seed, ...), which FlexibleRunner hands DeepSpeed as client state."""
    states = load_checkpoint_file(str(_model_states_files(path)[0]), trust=trust, deepspeed=True)
    return states.get("meta", {})


def checkpoint_seed(path: str, trust: bool = False) -> int | None:
    """The seed of the run that wrote the checkpoint: its sampler order depends on it."""
    if is_deepspeed_checkpoint(path):
        return deepspeed_checkpoint_meta(path, trust).get("seed")
    checkpoint = load_checkpoint_file(path, trust=trust)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a training checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint.get("meta", {}).get("seed")


# --- trained weights ---------------------------------------------------------------------------------


def deepspeed_model_state_dict(path: str, trust: bool = False) -> dict:
    """The model's full fp32 state dict, gathered from the optimizer partitions of every rank (any ZeRO stage).

    Those are DeepSpeed's fp32 master weights: exact also for bf16 runs, whose module weights are bf16,
    and for ZeRO-3, whose module file holds only this rank's slice. DeepSpeed reads the files itself,
    after `check_deepspeed_folder` has found nothing in them but tensors and plain data.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    check_deepspeed_folder(path, trust)
    folder = os.path.normpath(path)
    return get_fp32_state_dict_from_zero_checkpoint(os.path.dirname(folder) or ".", tag=os.path.basename(folder))


def read_model_state_dict(path: str, trust: bool = False) -> dict:
    """The RewardModel's state dict from an iter_N.pth file, or from the iter_N.pth/ folder of a DeepSpeed run."""
    if os.path.isdir(path):
        if not is_deepspeed_checkpoint(path):
            raise CheckpointError(f"{path} is a folder but not a DeepSpeed checkpoint; give an iter_N.pth checkpoint")
        return deepspeed_model_state_dict(path, trust)
    checkpoint = load_checkpoint_file(path, trust=trust)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a training checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint.get("state_dict", checkpoint)


def load_model_weights(reward_model, state_dict: dict, path: str) -> None:
    """Load strictly; a missing value head or any missing/extra/mis-shaped key is an error naming `path`."""
    check_adapter_kind(state_dict, getattr(reward_model, "lora", None) is not None, path)
    # DeepSpeed's gathering of a LoRA run may add the frozen base weights: the model has them already.
    frozen = getattr(reward_model, "_frozen_keys", None) if getattr(reward_model, "lora", None) is not None else None
    if frozen:
        state_dict = {key: value for key, value in state_dict.items() if key not in frozen}
    if VALUE_HEAD_KEY not in state_dict:
        raise CheckpointError(
            f"{path} has no trained value head ({VALUE_HEAD_KEY}); refusing to use a zero or random head"
        )
    expected = reward_model.state_dict()
    if BASE_IDENTITY_KEY in state_dict and BASE_IDENTITY_KEY in expected:
        # Adapters of another base model: say so before the identities' lengths make it a shape mismatch.
        check_same_base_model(
            decode_identity(state_dict[BASE_IDENTITY_KEY]), decode_identity(expected[BASE_IDENTITY_KEY])
        )
    check_weights_fit(expected, state_dict, path)
    reward_model.load_state_dict(state_dict, strict=True)


def check_weights_fit(expected: dict, state_dict: dict, path: str) -> None:
    """CheckpointError naming `path` and the keys unless `state_dict` has exactly the keys and shapes of `expected`."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if hasattr(expected[key], "shape") and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    )
    problems = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("mis-shaped (checkpoint vs config)", misshaped),
    ):
        if keys:
            shown = ", ".join(keys[:12]) + (f" (+{len(keys) - 12} more)" if len(keys) > 12 else "")
            problems.append(f"{len(keys)} {label}: {shown}")
    if problems:
        raise CheckpointError(f"{path} does not fit this config's model; " + "; ".join(problems))


# --- LoRA: what a checkpoint holds, and the base model its adapters belong to ----------------------


def check_adapter_kind(state_dict_keys, model_has_lora: bool, where: str = "the checkpoint") -> None:
    """A LoRA checkpoint (adapters + head) fits only a config with model.lora, a full one only a config without."""
    has_adapters = any(ADAPTER_MARK in key for key in state_dict_keys)
    if model_has_lora and not has_adapters:
        raise CheckpointError(
            f"{where} holds a model trained without LoRA (full weights, no adapters), but the config sets "
            "model.lora; use the config it was trained with (without lora)"
        )
    if has_adapters and not model_has_lora:
        raise CheckpointError(
            f"{where} holds LoRA adapters (a model trained with model.lora), but the config has no lora; "
            "use the config it was trained with (with the same lora settings)"
        )


def _file_fingerprint(files: list[Path]) -> str:
    """sha256 over each weight file's name, size, first MiB and evenly spaced samples: seconds even for 15 GB."""
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))  # safetensors: the header (names, dtypes, shapes) and more
            for index in range(_SAMPLED_CHUNKS):
                handle.seek(size * index // _SAMPLED_CHUNKS)
                digest.update(handle.read(_CHUNK_BYTES))
    return digest.hexdigest()


def _tensor_fingerprint(model) -> str:
    """sha256 over every tensor's name, dtype, shape and first values (a model built from a config)."""
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            head = tensor.detach().flatten()[:256].cpu()
            digest.update(head.view(torch.uint8).numpy().tobytes() if head.numel() else b"")
    return digest.hexdigest()


def base_model_identity(model) -> dict:
    """Which frozen base model a LoRA run trains on: {'name_or_path', 'fingerprint', 'fingerprinted'}.

    A local folder is fingerprinted by its weight files (the same for a 4-bit and a full-precision
    load of it); a Hub model by its name and commit; a model built from a config (random weights) by
    its tensors.
    """
    name = str(getattr(model.config, "name_or_path", "") or "")
    folder = Path(name)
    files = (
        sorted(path for path in folder.iterdir() if path.suffix in WEIGHT_FILE_SUFFIXES and path.is_file())
        if name and folder.is_dir()
        else []
    )
    if files:
        return dict(name_or_path=name, fingerprint=_file_fingerprint(files), fingerprinted="weight files")
    commit = getattr(model.config, "_commit_hash", None)
    if name and commit:
        return dict(
            name_or_path=name,
            fingerprint=hashlib.sha256(f"{name}@{commit}".encode()).hexdigest(),
            fingerprinted=f"Hub commit {commit}",
        )
    return dict(
        name_or_path=name or f"{type(model).__name__} built from a config",
        fingerprint=_tensor_fingerprint(model),
        fingerprinted="tensors (no weight files: a model built from a config has random weights)",
    )


def encode_identity(identity: dict):
    """A base-model identity as a uint8 tensor of its JSON (what the state dict holds)."""
    import json

    import torch

    return torch.tensor(list(json.dumps(identity, sort_keys=True).encode()), dtype=torch.uint8)


def decode_identity(encoded) -> dict:
    import json

    return json.loads(bytes(int(value) for value in encoded.tolist()).decode())


def check_same_base_model(saved: dict, current: dict) -> None:
    """Adapters fit only the base model they were trained on: a different one is an error naming both."""
    if saved.get("fingerprint") == current.get("fingerprint"):
        return
    raise CheckpointError(
        "the checkpoint's LoRA adapters were trained on base model "
        f"{saved.get('name_or_path')} (fingerprint {str(saved.get('fingerprint'))[:16]}, by its "
        f"{saved.get('fingerprinted')}), but this config builds {current.get('name_or_path')} (fingerprint "
        f"{str(current.get('fingerprint'))[:16]}, by its {current.get('fingerprinted')}); use the base model "
        "the adapters were trained on"
    )

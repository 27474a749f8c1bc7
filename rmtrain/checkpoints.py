"""Checkpoints: every read, find and trust decision, for `iter_N.pth` files and DeepSpeed folders.

A run writes `iter_N.pth` checkpoints into its work dir (mmengine's CheckpointHook), or, with
`--deepspeed`, `iter_N.pth/` folders (DeepSpeed's save_checkpoint through mmengine's FlexibleRunner),
and a `last_checkpoint` pointer to the newest complete one. Training (`--resume`), `rmtrain convert`
and `rmtrain eval` read them only through this module:

- what a path is: `is_checkpoint`, `is_deepspeed_checkpoint`;
- where a run resumes: `find_resume_checkpoint`, and the seed it started with: `checkpoint_seed`;
- which files may be unpickled in full: `load_checkpoint_file` and `trust_for_resume`;
- the trained weights: `read_model_state_dict` and `load_model_weights`;
- LoRA checkpoints: which kind a state dict is (`check_adapter_kind`) and which frozen base model
  its adapters belong to (`base_model_identity`, `check_same_base_model`).
"""

import hashlib
import os
import pickle
from pathlib import Path

from rmtrain.compat import register_checkpoint_reader
from rmtrain.errors import CheckpointError, ConfigError

RESUME_POINTER = "last_checkpoint"  # written by mmengine after each complete save
VALUE_HEAD_KEY = "v_head.weight"
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


# --- trust -------------------------------------------------------------------------------------------


def load_checkpoint_file(filename: str, trusted_dirs: list[str], map_location="cpu"):
    """torch.load for mmengine checkpoints, safe by default.

    mmengine checkpoints hold HistoryBuffer and numpy objects that torch's weights-only loader
    refuses (an allow-list would have to admit `getattr`, which defeats it). A file is first loaded
    safely; only a file inside one of `trusted_dirs` (where rmtrain's own runs write, or a
    checkpoint the user named explicitly) is loaded in full when that fails.
    """
    import torch

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


def trust_for_resume(trusted_dirs: list[str]) -> None:
    """Let mmengine's resume read the checkpoints under `trusted_dirs` (see load_checkpoint_file)."""
    trusted_dirs = list(trusted_dirs)
    register_checkpoint_reader(
        lambda filename, map_location: load_checkpoint_file(filename, trusted_dirs, map_location)
    )


# --- resume ------------------------------------------------------------------------------------------


def find_resume_checkpoint(resume: str | None, work_dir: str) -> str | None:
    """--resume auto -> the work dir's last complete checkpoint (None if there is none); PATH -> PATH."""
    if resume is None:
        return None
    if resume != "auto":
        if not is_checkpoint(resume):
            raise ConfigError(f"--resume {resume}: no such checkpoint file (or DeepSpeed checkpoint folder)")
        return resume
    pointer = os.path.join(work_dir, RESUME_POINTER)
    if not os.path.isfile(pointer):
        return None
    # mmengine writes this pointer only after a checkpoint is completely saved.
    path = Path(pointer).read_text().strip()
    return path if is_checkpoint(path) else None


def deepspeed_checkpoint_meta(path: str) -> dict:
    """mmengine's `meta` (iter, seed, ...), which FlexibleRunner hands DeepSpeed as client state."""
    import torch

    # Written by rmtrain's own DeepSpeed run: it holds mmengine objects, so it is not a weights-only file.
    states = torch.load(_model_states_files(path)[0], map_location="cpu", weights_only=False)
    return states.get("meta", {})


def checkpoint_seed(path: str) -> int | None:
    """The seed of the run that wrote the checkpoint: its sampler order depends on it."""
    if is_deepspeed_checkpoint(path):
        return deepspeed_checkpoint_meta(path).get("seed")
    checkpoint = load_checkpoint_file(path, [os.path.dirname(path)])
    return checkpoint.get("meta", {}).get("seed")


# --- trained weights ---------------------------------------------------------------------------------


def deepspeed_model_state_dict(path: str) -> dict:
    """The model's full fp32 state dict, gathered from the optimizer partitions of every rank (any ZeRO stage).

    Those are DeepSpeed's fp32 master weights: exact also for bf16 runs, whose module weights are bf16,
    and for ZeRO-3, whose module file holds only this rank's slice.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = os.path.normpath(path)
    return get_fp32_state_dict_from_zero_checkpoint(os.path.dirname(folder) or ".", tag=os.path.basename(folder))


def read_model_state_dict(path: str) -> dict:
    """The RewardModel's state dict from an iter_N.pth file, or from the iter_N.pth/ folder of a DeepSpeed run."""
    if os.path.isdir(path):
        if not is_deepspeed_checkpoint(path):
            raise CheckpointError(f"{path} is a folder but not a DeepSpeed checkpoint; give an iter_N.pth checkpoint")
        return deepspeed_model_state_dict(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    # The user names this file explicitly, so a full (non-weights-only) load is allowed for it.
    checkpoint = load_checkpoint_file(path, [os.path.dirname(path) or "."])
    return checkpoint.get("state_dict", checkpoint)


def load_model_weights(reward_model, state_dict: dict, path: str) -> None:
    """Load strictly; a missing value head or any missing/extra/mis-shaped key is an error naming `path`."""
    expected = reward_model.state_dict()
    check_adapter_kind(state_dict, getattr(reward_model, "lora", None) is not None, path)
    # DeepSpeed's gathering of a LoRA run may add the frozen base weights: the model has them already.
    frozen = getattr(reward_model, "_frozen_keys", None) if getattr(reward_model, "lora", None) is not None else None
    if frozen:
        state_dict = {key: value for key, value in state_dict.items() if key not in frozen}
    if VALUE_HEAD_KEY not in state_dict:
        raise CheckpointError(
            f"{path} has no trained value head ({VALUE_HEAD_KEY}); refusing to use a zero or random head"
        )
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
    reward_model.load_state_dict(state_dict, strict=True)


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

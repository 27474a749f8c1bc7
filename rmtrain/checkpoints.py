"""Checkpoints: every read, find and trust decision, for `iter_N.pth` files and DeepSpeed folders.

A run writes `iter_N.pth` checkpoints into its work dir (mmengine's CheckpointHook), or, with
`--deepspeed`, `iter_N.pth/` folders (DeepSpeed's save_checkpoint through mmengine's FlexibleRunner),
and a `last_checkpoint` pointer to the newest complete one. Training (`--resume`), `rmtrain convert`
and `rmtrain eval` read them only through this module:

- what a path is: `is_checkpoint`, `is_deepspeed_checkpoint`;
- where a run resumes: `find_resume_checkpoint`, and the seed it started with: `checkpoint_seed`;
- which files may be unpickled in full: `load_checkpoint_file` and `trust_for_resume`;
- the trained weights: `read_model_state_dict` and `load_model_weights`.
"""

import os
import pickle
from pathlib import Path

from rmtrain.compat import register_checkpoint_reader
from rmtrain.errors import CheckpointError, ConfigError

RESUME_POINTER = "last_checkpoint"  # written by mmengine after each complete save
VALUE_HEAD_KEY = "v_head.weight"


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
    if VALUE_HEAD_KEY not in state_dict:
        raise CheckpointError(
            f"{path} has no trained value head ({VALUE_HEAD_KEY}); refusing to use a zero or random head"
        )
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
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

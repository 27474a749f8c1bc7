"""Workarounds for the libraries rmtrain runs on, each with the version that needs it.

Nothing else in rmtrain works around a library bug; add new ones here with their version.
"""

import os
import pickle

import torch
from mmengine.runner.checkpoint import CheckpointLoader


def allow_trusted_checkpoint_loading(trusted_dir: str) -> None:
    """Let mmengine resume from the checkpoints that rmtrain itself wrote under `trusted_dir`.

    Needed with torch >= 2.6 and mmengine <= 0.10.7: torch.load defaults to weights_only=True, and
    mmengine checkpoints hold HistoryBuffer and numpy objects that the safe loader refuses (an
    allow-list would have to admit `getattr`, which defeats it). Files are first loaded safely;
    only a file inside the run's own work dir is loaded in full when that fails.
    """
    trusted_root = os.path.realpath(trusted_dir)

    def load_local(filename, map_location):
        path = os.path.realpath(os.path.expanduser(filename))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{filename} can not be found.")
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            if os.path.commonpath([path, trusted_root]) != trusted_root:
                raise RuntimeError(
                    f"{filename} holds Python objects beyond tensors and lies outside this run's work dir "
                    f"({trusted_dir}); rmtrain resumes only from checkpoints its own runs wrote there"
                ) from None
            return torch.load(path, map_location=map_location, weights_only=False)

    CheckpointLoader.register_scheme(prefixes="", force=True)(load_local)


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

"""Reward models to evaluate, reduced to what the shared scoring rule needs: a trunk and a value head.

Scores never come from a Hugging Face model's own forward: `rmtrain.scoring.score_sequences`
reads every model's score (training, export check, evaluation), so all three agree on where a
score is read. What each kind of model contributes:

- a folder from `rmtrain convert pth_to_hf`, `<Arch>ForSequenceClassification` (num_labels=1):
  trunk `model.base_model`, head `model.score`; its tokenizer carries the training chat template;
- a folder with `InternLM2ForRewardModel`: trunk `model.model`, head `model.v_head`;
- a training checkpoint (`iter_N.pth`, or a DeepSpeed `iter_N.pth/` folder) with its config: the
  RewardModel built from the config, trunk `.model`, head `.v_head`, and the config's tokenizer.

The tokenizer side (`encoding`) is separate from the weights (`score_modules`), so the data can be
read and checked before a large model is loaded.

A folder is data, not code: its settings come from `rmtrain_config.json`, its tokenizer and model from
transformers' own or rmtrain's registered classes. Its Python files (`rmtrain_config.py`, a tokenizer's
or a model's code) run only with `trust_remote_code=True` (the user's --trust-remote-code). Weights that
do not fit the model's class (missing or unexpected keys) are an error, never a randomly initialised head.
"""

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from mmengine.logging import print_log
from torch import nn

from rmtrain.builder import build
from rmtrain.checkpoints import is_checkpoint, load_model_weights, read_model_state_dict
from rmtrain.config import EXPORT_SETTINGS_FILE, load_config, read_export_settings, scoring_inputs
from rmtrain.engine.precision import bf16_native
from rmtrain.errors import ConfigError, EvaluationError, RmtrainError
from rmtrain.scoring import reward_token_or_none

DEFAULT_MAX_LENGTH = 2048  # when neither a config nor the folder's rmtrain_config.json gives one
EXPORTED_CONFIG = "rmtrain_config.py"  # the training config that `rmtrain convert` saves in the folder, as a record
REMOTE_CODE_FLAG = "--trust-remote-code"


@dataclass
class Encoding:
    """How conversations become token ids for this model (see `rmtrain.scoring.encode_conversation`)."""

    tokenizer: Any
    reward_token_id: int | None
    chat_template: str | None  # a named template or Jinja text; None: the tokenizer's own
    max_length: int
    max_length_from: str  # 'config', 'rmtrain_config.json', 'rmtrain_config.py' or 'default', for the report
    # Reference-conditioned (POLAR) models: tokens kept of the reference and of each response; None: chat models
    max_response_length: int | None = None


def default_device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """float32 on the CPU; bfloat16 on a GPU that computes it natively (float32 weights of a large model rarely fit)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if bf16_native("cuda") else torch.float32
    return torch.device("cpu"), torch.float32


def _no_reward_model(folder: str, what: str) -> EvaluationError:
    return EvaluationError(
        f"{folder} holds no reward model ({what}). `rmtrain eval` needs a folder written by `rmtrain convert "
        "pth_to_hf` (an <Arch>ForSequenceClassification with num_labels=1, or InternLM2ForRewardModel), or a "
        "training checkpoint (iter_N.pth) with --config"
    )


def _reward_folder_config(folder: str, trust_remote_code: bool):
    """The folder's transformers config, if it describes a model with one scalar score; EvaluationError otherwise."""
    from transformers import AutoConfig

    import rmtrain.model.internlm2  # noqa: F401  (registers InternLM2 with the Auto classes)

    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise _no_reward_model(folder, "no config.json")
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        raise EvaluationError(
            f"{folder}/config.json does not load with transformers' or rmtrain's classes "
            f"({str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}); a model "
            f"defined by the folder's own code loads only with {REMOTE_CODE_FLAG}"
        ) from None
    architectures = list(getattr(config, "architectures", None) or [])
    if "InternLM2ForRewardModel" in architectures:
        return config
    classifiers = [name for name in architectures if name.endswith("ForSequenceClassification")]
    if not classifiers:
        raise _no_reward_model(folder, f"its config.json names {', '.join(architectures) or 'no architecture'}")
    if config.num_labels != 1:
        raise _no_reward_model(folder, f"{classifiers[0]} with num_labels={config.num_labels}, not one score")
    return config


def _is_internlm2_reward_model(config) -> bool:
    return "InternLM2ForRewardModel" in (getattr(config, "architectures", None) or [])


class RewardModelSource:
    """A converted folder, or a training checkpoint with the config it was trained with.

    max_length (unless the caller overrides it): a checkpoint's config gives it; for a folder, the
    `config` when given, else the folder's rmtrain_config.py when it loads here, else DEFAULT_MAX_LENGTH.
    """

    def __init__(
        self, model: str, config: str | None = None, trust_remote_code: bool = False, trust_checkpoint: bool = False
    ):
        self.model = model
        self.trust_remote_code = trust_remote_code
        self.trust_checkpoint = trust_checkpoint
        self.is_checkpoint = is_checkpoint(model)
        self.cfg = load_config(config) if config is not None else None
        if self.is_checkpoint and self.cfg is None:
            raise ConfigError(f"{model} is a training checkpoint: give the config it was trained with (--config CFG)")
        if not self.is_checkpoint and not os.path.isdir(model):
            raise EvaluationError(f"model not found: {model} is neither a model folder nor a checkpoint file")
        self.folder_config = None if self.is_checkpoint else _reward_folder_config(model, trust_remote_code)

    def encoding(self, max_length: int | None = None) -> Encoding:
        """The tokenizer and scoring inputs; `max_length` (the user's --max-length) replaces the model's own."""
        if self.is_checkpoint:
            inputs = scoring_inputs(self.cfg)
            return Encoding(
                tokenizer=build(self.cfg.train_dataloader.dataset.tokenizer),
                reward_token_id=inputs.reward_token_id,
                chat_template=inputs.chat_template,
                max_length=inputs.max_length,
                max_length_from="config",
                max_response_length=inputs.max_response_length,
            )
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError) as error:
            raise EvaluationError(
                f"{self.model} has no tokenizer that transformers can load without running the folder's code "
                f"({str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}); "
                f"a tokenizer defined by the folder's own Python loads only with {REMOTE_CODE_FLAG}"
            ) from None
        max_length, max_length_from = (max_length, "--max-length") if max_length else self._folder_max_length()
        return Encoding(
            tokenizer=tokenizer,
            reward_token_id=reward_token_or_none(getattr(self.folder_config, "reward_token_id", None)),
            chat_template=None,  # the folder's tokenizer carries the template used in training
            max_length=max_length,
            max_length_from=max_length_from,
            max_response_length=(
                scoring_inputs(self.cfg).max_response_length
                if self.cfg is not None
                else getattr(self.folder_config, "reference_max_response_length", None)
            ),
        )

    def _folder_max_length(self) -> tuple[int, str]:
        if self.cfg is not None:
            return scoring_inputs(self.cfg).max_length, "config"
        settings = read_export_settings(self.model)
        if settings is not None:
            return settings["max_length"], EXPORT_SETTINGS_FILE
        path = os.path.join(self.model, EXPORTED_CONFIG)
        if not os.path.isfile(path):
            return DEFAULT_MAX_LENGTH, "default"
        if not self.trust_remote_code:
            raise EvaluationError(
                f"{self.model} has {EXPORTED_CONFIG} but no {EXPORT_SETTINGS_FILE}: rmtrain does not execute a "
                f"folder's Python. Re-export with this version (`rmtrain convert pth_to_hf`), give --max-length "
                f"or --config, or pass {REMOTE_CODE_FLAG} to run {EXPORTED_CONFIG}"
            )
        try:
            return scoring_inputs(load_config(path)).max_length, EXPORTED_CONFIG
        except RmtrainError as error:  # e.g. it imports a module that lived beside the original config
            print_log(
                f"{path} does not load here ({error}); using max_length {DEFAULT_MAX_LENGTH} (or pass --max-length)",
                logger="current",
                level=logging.WARNING,
            )
            return DEFAULT_MAX_LENGTH, "default"

    def score_modules(self, device, dtype: torch.dtype) -> tuple[nn.Module, nn.Module, str]:
        """(trunk, value head, a description) on `device` in `dtype` and eval mode."""
        if self.is_checkpoint:
            trunk, head, name = self._checkpoint_modules()
        else:
            trunk, head, name = self._folder_modules(dtype)
        for module in (trunk, head):
            module.to(device=device, dtype=dtype).eval()
        return trunk, head, name

    def _checkpoint_modules(self) -> tuple[nn.Module, nn.Module, str]:
        # The same readers and checks as the conversion (a trained value head, every key fitting the model).
        reward_model = build(self.cfg.model)
        load_model_weights(reward_model, read_model_state_dict(self.model, self.trust_checkpoint), self.model)
        return reward_model.model, reward_model.v_head, f"RewardModel of {os.path.basename(self.cfg.filename)}"

    def _folder_modules(self, dtype: torch.dtype) -> tuple[nn.Module, nn.Module, str]:
        if _is_internlm2_reward_model(self.folder_config):
            from rmtrain.model.internlm2 import InternLM2ForRewardModel

            # rmtrain's own class, never the folder's copy of it
            model, info = InternLM2ForRewardModel.from_pretrained(self.model, dtype=dtype, output_loading_info=True)
            _check_loading_info(self.model, info)
            return model.model, model.v_head, type(model).__name__
        from transformers import AutoModelForSequenceClassification

        model, info = AutoModelForSequenceClassification.from_pretrained(
            self.model, dtype=dtype, trust_remote_code=self.trust_remote_code, output_loading_info=True
        )
        _check_loading_info(self.model, info)
        return model.base_model, model.score, type(model).__name__


def _check_loading_info(folder: str, info: dict) -> None:
    """Every weight of the model's class is in the folder and every weight in the folder is used."""
    problems = []
    for label in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(key if isinstance(key, str) else key[0]) for key in info.get(label) or [])
        if keys:
            shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
            problems.append(f"{len(keys)} {label.replace('_keys', '')}: {shown}")
    if problems:
        raise EvaluationError(
            f"{folder}: its weights do not fit its config.json's model ({'; '.join(problems)}); refusing to score "
            "with randomly initialised weights"
        )

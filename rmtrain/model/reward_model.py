"""The reward model: a language-model trunk without its LM head, plus a scalar value head."""

import torch
import torch.distributed as dist
from mmengine.model import BaseModel
from torch import nn

from rmtrain.builder import build
from rmtrain.checkpoints import (
    BASE_IDENTITY_KEY,
    base_model_identity,
    check_adapter_kind,
    check_same_base_model,
    decode_identity,
    encode_identity,
)
from rmtrain.compat import enable_activation_checkpointing
from rmtrain.errors import ConfigError
from rmtrain.model import lora as lora_trunk
from rmtrain.model.losses import LOSS_TYPES, PENALTY_TYPES, pair_loss, score_penalty
from rmtrain.model.packed_attention import packed_attention_implementation
from rmtrain.model.sequence_parallel import ULYSSES, score_sequences_in_parallel
from rmtrain.parallel import sequence_parallel_size
from rmtrain.scoring import reward_token_or_none, score_sequences

VALUE_HEAD_INITS = ("normal", "zeros")


def init_value_head(head: nn.Linear, how: str, std: float) -> None:
    """'normal': normal(0, std) weights (a random head, so the trunk learns from the first step); 'zeros': all 0."""
    if how == "zeros":
        nn.init.zeros_(head.weight)
    else:
        nn.init.normal_(head.weight, mean=0.0, std=std)


def trunk_of(language_model: nn.Module) -> nn.Module:
    """The transformer body of a Hugging Face model: LlamaForCausalLM -> LlamaModel; LlamaModel -> itself."""
    return getattr(language_model, "base_model", language_model)


def _is_score_head(module, hidden_size: int) -> bool:
    """A bias-free Linear(hidden, 1), the value head shape that training, export and evaluation read."""
    return (
        isinstance(module, nn.Linear)
        and module.bias is None
        and (module.in_features, module.out_features) == (hidden_size, 1)
    )


class BaseModelIdentity(nn.Module):
    """The frozen base model of a LoRA reward model, kept in its state dict (`base_identity.encoded`).

    A buffer of the identity's JSON bytes: a plain tensor, so every checkpoint format, weights-only
    loading and the broadcast of the state dict across ranks carry it. Loading a state dict whose
    identity differs (adapters trained on another base model) is an error naming both.
    """

    def __init__(self, identity: dict):
        super().__init__()
        self.identity = dict(identity)
        self.register_buffer("encoded", encode_identity(self.identity))
        self.register_load_state_dict_pre_hook(_check_identity)


def _check_identity(module, state_dict, prefix, *args) -> None:
    key = prefix + "encoded"
    if key in state_dict:
        check_same_base_model(decode_identity(state_dict[key]), module.identity)


def _compute_dtype() -> torch.dtype:
    """bf16 where the device computes it natively, else fp32 (the 4-bit layers' matmul dtype)."""
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return (
        torch.bfloat16 if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else torch.float32
    )


def _check_checkpoint_kind(module, state_dict, prefix, *args) -> None:
    keys = [key[len(prefix) :] for key in state_dict if key.startswith(prefix)]
    if keys:
        check_adapter_kind(keys, module.lora is not None)


def _forgive_frozen_keys(module, incompatible_keys) -> None:
    """A LoRA state dict leaves out the frozen base weights: they are not missing."""
    missing = incompatible_keys.missing_keys
    missing[:] = [key for key in missing if key not in module._frozen_keys]


class RewardModel(BaseModel):
    """Scores a conversation with one number, read at its last attended token (the reward token).

    Args:
        llm: the language model or its config, e.g.
            `dict(type=AutoModel.from_pretrained, pretrained_model_name_or_path=...)`; a causal-LM
            class works too, its LM head is dropped. A model with a `v_head` (a pre-trained reward
            model such as POLAR's, loaded as InternLM2ForRewardModel) keeps that head.
        reward_token_id: the token appended to every sequence (checked against the embedding size).
        loss_type: 'ranking' (-log sigmoid(chosen - rejected - margin)) or 'focal'.
        penalty_type: 'log_barrier' (keeps scores in (-5, 5)), 'l2' or 'none'.
        penalty_weight: weight of the penalty, summed over both sides' scores and averaged over pairs.
        use_activation_checkpointing: recompute activations in backward to save memory.
        value_head_init: 'normal' (weights drawn from normal(0, the trunk config's initializer_range),
            as Hugging Face initialises a new score head: the trunk gets gradients from the first step)
            or 'zeros' (XTuner's choice: every score starts at 0, only the head moves on the first step).
        use_varlen_attn: the batches are packed rows (`build_preference_dataset(use_varlen_attn=True)`):
            rmtrain's packed attention, which runs flash-attn where the row is on a GPU in bf16/fp16
            (`rmtrain.model.packed_attention`) and SDPA over buckets of similar-length sequences elsewhere.
        lora: `dict(type=LoraConfig, r=..., lora_alpha=..., ...)`: the trunk is frozen and trained through
            PEFT adapters; the value head (and any `modules_to_save`) is trained in full. With
            `llm=dict(..., quantization_config=dict(type=BitsAndBytesConfig, ...))` the frozen trunk is
            4- or 8-bit (QLoRA). The state dict then holds only what is trained, and the base model's
            identity (see rmtrain.checkpoints.base_model_identity).
        compile_trunk: True compiles the trunk with `torch.compile(dynamic=True)`; a dict gives
            `torch.compile`'s arguments (e.g. `dict(mode="max-autotune")`, `dynamic` defaults to True).
            In place: the state dict keeps its keys, so checkpoints and export are unchanged. The compile
            happens at the first forward pass and costs about a minute on a CPU; a batch of a new shape
            can compile again. Pays on long runs only: see docs/benchmarks.md ("torch.compile of the
            trunk"). Not with sequence parallelism (its attention exchanges activations between processes).
    """

    def __init__(
        self,
        llm,
        reward_token_id: int | None = None,
        loss_type: str = "ranking",
        penalty_type: str = "log_barrier",
        penalty_weight: float = 0.01,
        use_activation_checkpointing: bool = True,
        use_varlen_attn: bool = False,
        lora=None,
        value_head_init: str = "normal",
        compile_trunk: bool | dict = False,
    ):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type must be one of {LOSS_TYPES}, got '{loss_type}'")
        if penalty_type not in PENALTY_TYPES:
            raise ConfigError(f"penalty_type must be one of {PENALTY_TYPES}, got '{penalty_type}'")
        if value_head_init not in VALUE_HEAD_INITS:
            raise ConfigError(f"value_head_init must be one of {VALUE_HEAD_INITS}, got '{value_head_init}'")
        if compile_trunk and sequence_parallel_size() > 1:
            raise ConfigError("model.compile_trunk=True does not work with sequence_parallel_size > 1")
        quantized = lora_trunk.is_quantized(llm)
        if quantized:
            if lora is None:
                raise ConfigError(
                    "llm.quantization_config needs model.lora: a quantised trunk is trained only through adapters"
                )
            lora_trunk.require("bitsandbytes")
            llm = lora_trunk.with_compute_dtype(llm, _compute_dtype())
        if lora is not None:
            lora_trunk.require("peft")
        self.lora = lora
        self.quantized = quantized
        # A quantised trunk is loaded again in full precision to merge its adapters (a config dict, never a module).
        self._llm_config = llm if quantized else None
        self.loss_type = loss_type
        self.penalty_type = penalty_type
        self.penalty_weight = penalty_weight
        self.reward_token_id = reward_token_id = reward_token_or_none(reward_token_id)

        language_model = build(llm, recursive=True)
        self.model = trunk_of(language_model)
        self.model.config.use_cache = False
        if use_varlen_attn:  # packed batches: attention stays within each sequence, at its own cost
            self.model.set_attn_implementation(packed_attention_implementation())
        # Rows split over a sequence-parallel group (the engine makes the groups before building the model).
        self.sequence_parallel = sequence_parallel_size() > 1
        if self.sequence_parallel:
            self.model.set_attn_implementation(ULYSSES)
        vocab_size = self.model.get_input_embeddings().num_embeddings
        if reward_token_id is not None and reward_token_id >= vocab_size:
            raise ConfigError(
                f"reward_token_id={reward_token_id} is outside the model's embeddings (size {vocab_size})"
            )
        pretrained_head = getattr(language_model, "v_head", None)
        if _is_score_head(pretrained_head, self.model.config.hidden_size):
            # A pre-trained reward model (POLAR's base models) keeps its head and goes on from its scores.
            self.v_head = pretrained_head
        else:
            self.v_head = nn.Linear(self.model.config.hidden_size, 1, bias=False)
            init_value_head(self.v_head, value_head_init, getattr(self.model.config, "initializer_range", 0.02))
        if use_activation_checkpointing:
            enable_activation_checkpointing(self.model)
        if lora is not None:
            self.base_identity = BaseModelIdentity(base_model_identity(self.model))
            self.model = lora_trunk.apply_lora(self.model, lora, quantized, use_activation_checkpointing)
            # What a checkpoint holds: the trained parameters (adapters, head) and the base model's identity.
            self._saved_keys = {name for name, param in self.named_parameters() if param.requires_grad}
            self._saved_keys.add(BASE_IDENTITY_KEY)
            self._frozen_keys = set(super().state_dict()) - self._saved_keys
            self.register_load_state_dict_post_hook(_forgive_frozen_keys)
        self.register_load_state_dict_pre_hook(_check_checkpoint_kind)
        if compile_trunk:
            # Batches change shape every step (length-grouped or packed): a static compile would recompile each.
            options = {"dynamic": True, **(compile_trunk if isinstance(compile_trunk, dict) else {})}
            self.model.compile(**options)

    def state_dict(self, *args, **kwargs):
        """Everything (full training), or only what LoRA training changes: adapters, head, base-model identity."""
        state = super().state_dict(*args, **kwargs)
        if self.lora is None:
            return state
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for key in [key for key in state if key[len(prefix) :] not in self._saved_keys]:
            del state[key]
        return state

    def init_weights(self) -> None:
        """mmengine's Runner calls this before training; it would call the trunk's own init_weights.

        For a LoRA model that must not happen: transformers re-initialises every module it did not load
        (PEFT's lora_A and lora_B, drawn as N(0, 0.02)), so the adapters would start non-zero, as a random
        change of the base model, instead of PEFT's initialisation (lora_B = 0: training starts from the
        base model). mmengine's bookkeeping also takes every parameter's mean, which 4/8-bit weights lack.
        The trunk is pretrained, the adapters initialised by PEFT and the head zero: nothing to do.
        """
        if self.lora is None:
            super().init_weights()

    def dequantize_trunk(self) -> None:
        """A quantised LoRA trunk -> the same base model in full precision (fp32) with the same adapters."""
        if not self.quantized:
            return
        full_precision = trunk_of(build(lora_trunk.without_quantization(self._llm_config), recursive=True))
        check_same_base_model(self.base_identity.identity, base_model_identity(full_precision))
        self.model = lora_trunk.with_adapters_of(self.model, full_precision)
        self.quantized = False

    def merge_lora(self) -> None:
        """Merge the adapters into the trunk (fp32; a quantised trunk is rebuilt in full precision first)."""
        if self.lora is None:
            return
        self.dequantize_trunk()
        self.model = self.model.merge_and_unload().float()
        self.v_head.float()
        del self.base_identity
        self.lora = None

    def score(self, batch: dict) -> torch.Tensor:
        """A padded or packed batch (see `rmtrain.scoring.score_sequences`) -> [sequences] fp32 scores.

        Under sequence parallelism every rank of the group passes the same batch and gets every score.
        """
        if self.sequence_parallel:
            return score_sequences_in_parallel(self.model, self.v_head, batch)
        return score_sequences(self.model, self.v_head, batch)

    def parse_losses(self, losses: dict):
        """Backward uses this rank's loss; the logged values are over all ranks.

        num_samples and num_tokens are summed over ranks, the other values averaged (every rank
        sees the same number of pairs per step). The ranks of a sequence-parallel group share one
        batch: the sums are divided by its size, so each pair counts once.
        """
        loss, log_vars = super().parse_losses(losses)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            names = list(log_vars)
            values = torch.stack([log_vars[name].detach().float() for name in names])
            dist.all_reduce(values)
            for name, value in zip(names, values):
                if name in ("num_samples", "num_tokens"):
                    log_vars[name] = value / sequence_parallel_size()
                else:
                    log_vars[name] = value / dist.get_world_size()
        return loss, log_vars

    def forward(self, data: dict, data_samples=None, mode: str = "loss"):
        """`data` from `preference_collate_fn`: the chosen sides of the pairs first, then their rejected sides.

        mode 'loss': the loss and the logged metrics. mode 'predict' (validation): one dict per pair
        with its chosen and rejected scores.
        """
        scores = self.score(data)
        num_pairs = scores.shape[0] // 2
        chosen, rejected = scores[:num_pairs], scores[num_pairs:]
        if mode != "loss":
            return [{"chosen_score": c, "rejected_score": r} for c, r in zip(chosen.tolist(), rejected.tolist())]
        margin = data.get("margin")
        loss = pair_loss(chosen, rejected, margin, self.loss_type).mean()
        if self.penalty_type != "none":
            loss = loss + self.penalty_weight * score_penalty(scores, self.penalty_type).sum() / num_pairs
        with torch.no_grad():
            return {
                "loss": loss,
                "acc": (chosen > rejected).float().mean(),  # a tie counts as wrong
                "chosen_score_mean": chosen.mean(),
                "rejected_score_mean": rejected.mean(),
                "num_samples": torch.tensor(float(num_pairs), device=scores.device),
                "num_tokens": torch.tensor(float(data["num_tokens"]), device=scores.device),  # real tokens, not padding
            }

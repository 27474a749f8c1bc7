"""The reward model: a language-model trunk without its LM head, plus a scalar value head."""

import torch
import torch.distributed as dist
from mmengine.model import BaseModel
from torch import nn

from rmtrain.builder import build
from rmtrain.compat import enable_activation_checkpointing
from rmtrain.errors import ConfigError
from rmtrain.model.losses import LOSS_TYPES, PENALTY_TYPES, pair_loss, score_penalty
from rmtrain.model.packed_attention import packed_attention_implementation
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
            (`rmtrain.model.packed_attention`) and per-sequence SDPA elsewhere.
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
    ):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type must be one of {LOSS_TYPES}, got '{loss_type}'")
        if penalty_type not in PENALTY_TYPES:
            raise ConfigError(f"penalty_type must be one of {PENALTY_TYPES}, got '{penalty_type}'")
        if value_head_init not in VALUE_HEAD_INITS:
            raise ConfigError(f"value_head_init must be one of {VALUE_HEAD_INITS}, got '{value_head_init}'")
        if lora is not None:
            raise ConfigError("LoRA reward models are not supported yet: remove `lora` from the model config")
        self.loss_type = loss_type
        self.penalty_type = penalty_type
        self.penalty_weight = penalty_weight
        self.reward_token_id = reward_token_id = reward_token_or_none(reward_token_id)

        language_model = build(llm, recursive=True)
        self.model = trunk_of(language_model)
        self.model.config.use_cache = False
        if use_varlen_attn:  # packed batches: attention stays within each sequence, at its own cost
            self.model.set_attn_implementation(packed_attention_implementation())
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

    def score(self, batch: dict) -> torch.Tensor:
        """A padded or packed batch (see `rmtrain.scoring.score_sequences`) -> [sequences] fp32 scores."""
        return score_sequences(self.model, self.v_head, batch)

    def parse_losses(self, losses: dict):
        """Backward uses this rank's loss; the logged values are over all ranks.

        num_samples and num_tokens are summed over ranks, the other values averaged (every rank
        sees the same number of pairs per step).
        """
        loss, log_vars = super().parse_losses(losses)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            names = list(log_vars)
            values = torch.stack([log_vars[name].detach().float() for name in names])
            dist.all_reduce(values)
            for name, value in zip(names, values):
                log_vars[name] = value if name in ("num_samples", "num_tokens") else value / dist.get_world_size()
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

"""PyTorch InternLM2: the trunk, a causal-LM head and a scalar reward head.

Parameter names follow the published InternLM2 checkpoints (`model.tok_embeddings`,
`model.layers.N.attention.wqkv`, `...attention.wo`, `...feed_forward.w1/w2/w3`,
`...attention_norm`, `...ffn_norm`, `model.norm`, `output`), so their safetensors load unchanged.

This file is copied next to exported weights and loaded with `trust_remote_code=True` on machines
that do not have rmtrain: it imports only torch, transformers and its sibling configuration file.

Not implemented: a key/value cache (so no incremental generation) and attention weights as outputs.
Attention runs through `scaled_dot_product_attention`, except for rows without padding when the model
is switched to an attention function registered with transformers (`flash_attention_2`, or
rmtrain's packed attention): that function then gets the rows (and packed rows' sequence offsets).
"""

import math
from functools import partial

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN

try:  # transformers >= 4.48: other attention functions (flash_attention_2, registered ones)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
except ImportError:
    ALL_ATTENTION_FUNCTIONS = {}
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)

from .configuration_internlm2 import InternLM2Config

try:  # transformers >= 4.52: the layer base class that `activation_checkpointing_enable` drives
    from transformers.modeling_layers import GradientCheckpointingLayer as _CheckpointableLayer
except ImportError:  # older transformers: the same contract, written out

    class _CheckpointableLayer(nn.Module):
        gradient_checkpointing = False

        def __call__(self, *args, **kwargs):
            if self.gradient_checkpointing and self.training:
                return self._gradient_checkpointing_func(partial(super().__call__, **kwargs), *args)
            return super().__call__(*args, **kwargs)


_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

__all__ = [
    "InternLM2ForCausalLM",
    "InternLM2ForRewardModel",
    "InternLM2Model",
    "InternLM2PreTrainedModel",
]


class InternLM2RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in fp32 and cast back to the input dtype."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        x = hidden_states.float()
        x = x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class InternLM2RotaryEmbedding(nn.Module):
    """cos/sin tables of the rotary position embedding, computed per call from the position ids.

    Scaling (`config.rope_scaling`): "linear" divides the positions by `factor`; "dynamic" (NTK)
    enlarges the base once the sequence (largest position + 1) exceeds `max_position_embeddings`:
    base' = base * (factor * seq_len / max_pos - (factor - 1)) ** (dim / (dim - 2)).
    Nothing is cached between calls, so the result depends only on the current positions, and there
    is no buffer to initialise when a checkpoint is loaded.
    """

    def __init__(self, config):
        super().__init__()
        self.dim = config.hidden_size // config.num_attention_heads
        self.base = float(config.rope_theta)
        self.max_position_embeddings = config.max_position_embeddings
        scaling = config.rope_scaling or {}
        self.scaling_type = scaling.get("type")
        self.scaling_factor = float(scaling.get("factor", 1.0))

    def _inv_freq(self, base, device):
        exponents = torch.arange(0, self.dim, 2, device=device, dtype=torch.int64).float() / self.dim
        return 1.0 / (base**exponents)

    @torch.no_grad()
    def forward(self, x, position_ids):
        """x: any tensor on the target device/dtype; position_ids: [batch or 1, seq] -> cos, sin [b, seq, dim]."""
        base = self.base
        if self.scaling_type == "dynamic":
            seq_len = int(position_ids.max()) + 1
            if seq_len > self.max_position_embeddings:
                stretch = self.scaling_factor * seq_len / self.max_position_embeddings - (self.scaling_factor - 1)
                base = base * stretch ** (self.dim / (self.dim - 2))
        inv_freq = self._inv_freq(base, x.device)
        positions = position_ids.float()
        if self.scaling_type == "linear":
            positions = positions / self.scaling_factor
        angles = positions[..., None] * inv_freq
        emb = torch.cat((angles, angles), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _apply_rotary(x, cos, sin):
    """x: [b, heads, seq, dim]; cos/sin: [b, seq, dim]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


def _segment_ids(position_ids):
    """Packed rows: a new segment starts wherever a position is not its predecessor + 1.

    Returns [b, seq] segment numbers, or None when every row is one plain segment.
    """
    if position_ids is None:
        return None
    step = torch.diff(position_ids, dim=-1, prepend=position_ids[:, :1] - 1)
    segments = (step != 1).cumsum(dim=-1)
    if not bool(segments[:, -1].any()):
        return None
    return segments


def _registered_attention(config):
    """The attention function registered with transformers under the config's implementation name,
    or None for this file's own SDPA (also used for 'eager' and 'sdpa')."""
    name = getattr(config, "_attn_implementation", None)
    if name in (None, "eager", "sdpa") or name not in ALL_ATTENTION_FUNCTIONS:
        return None
    # (transformers lets `set_attn_implementation` switch a model only if its file calls get_interface)
    return ALL_ATTENTION_FUNCTIONS.get_interface(name, None)


def _attention_mask(attention_mask, position_ids, seq_len, device):
    """The boolean [b, 1, q, k] mask for SDPA (True = may attend), or None for plain causal attention.

    - With a 2D padding mask (1 = token, 0 = padding; left or right padding): causal and only to
      real keys. Every query may also see itself, so padding rows never attend to nothing (which
      would give NaNs that leak into real rows through the values).
    - Without a mask but with position ids that restart inside a row (packed sequences): causal
      and only inside the query's own segment.
    """
    if attention_mask is not None and bool((attention_mask == 0).any()):
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
        allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]
        return allowed | torch.eye(seq_len, dtype=torch.bool, device=device)
    if attention_mask is None:
        segments = _segment_ids(position_ids)
        if segments is not None:
            causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
            same = segments[:, :, None] == segments[:, None, :]
            return (causal[None] & same)[:, None]
    return None


class InternLM2MLP(nn.Module):
    """Gated feed-forward: w2(act(w1 x) * w3 x); w1 is the gate, w3 the up and w2 the down projection."""

    def __init__(self, config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


class InternLM2Attention(nn.Module):
    """Grouped-query self-attention with one packed `wqkv` projection.

    `wqkv` output rows are grouped per key/value head: for each of the `num_key_value_heads` groups,
    its `num_attention_heads // num_key_value_heads` query heads, then its key head, then its value
    head, each `head_dim` rows. Query head i therefore uses key/value head i // group_size.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.is_causal = True
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.group_size = self.num_heads // self.num_kv_heads
        self.num_key_value_groups = self.group_size  # the name transformers' attention functions read
        self.head_dim = config.hidden_size // self.num_heads
        self.wqkv = nn.Linear(
            config.hidden_size, (self.num_heads + 2 * self.num_kv_heads) * self.head_dim, bias=config.bias
        )
        self.wo = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.bias)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, **kwargs):
        batch, seq_len, _ = hidden_states.shape
        packed = self.wqkv(hidden_states).view(batch, seq_len, self.num_kv_heads, self.group_size + 2, self.head_dim)
        # -> [b, heads, seq, dim]
        query = packed[:, :, :, : self.group_size].reshape(batch, seq_len, self.num_heads, self.head_dim)
        query = query.transpose(1, 2)
        key = packed[:, :, :, -2].transpose(1, 2)
        value = packed[:, :, :, -1].transpose(1, 2)

        cos, sin = position_embeddings
        query = _apply_rotary(query, cos, sin)
        key = _apply_rotary(key, cos, sin)
        implementation = _registered_attention(self.config)
        if implementation is not None and attention_mask is None:
            # Packed rows under flash_attention_2 or rmtrain's bucketed SDPA: the function reads
            # the sequence offsets (cu_seq_lens_q/k) from kwargs. Padded batches use the SDPA below.
            out, _ = implementation(self, query, key, value, None, scaling=self.head_dim**-0.5, **kwargs)
            return self.wo(out.reshape(batch, seq_len, self.num_heads * self.head_dim))
        if self.group_size > 1:  # each key/value head serves its group of consecutive query heads
            key = key.repeat_interleave(self.group_size, dim=1)
            value = value.repeat_interleave(self.group_size, dim=1)

        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            is_causal=attention_mask is None and seq_len > 1,
            scale=1.0 / math.sqrt(self.head_dim),
        )
        out = out.transpose(1, 2).reshape(batch, seq_len, self.num_heads * self.head_dim)
        return self.wo(out)


class InternLM2DecoderLayer(_CheckpointableLayer):
    """Pre-norm block: x + attention(attention_norm(x)), then + feed_forward(ffn_norm(.)).

    Checkpointable: `activation_checkpointing_enable()` recomputes it in backward. The hidden states
    are the one positional argument, as reentrant checkpointing requires.
    """

    def __init__(self, config):
        super().__init__()
        self.attention = InternLM2Attention(config)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        hidden_states = hidden_states + self.attention(
            self.attention_norm(hidden_states), position_embeddings, attention_mask, **kwargs
        )
        return hidden_states + self.feed_forward(self.ffn_norm(hidden_states))


class InternLM2PreTrainedModel(PreTrainedModel):
    config_class = InternLM2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternLM2DecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True  # packed rows reach flash-attn through transformers' registered function

    def _init_weights(self, module):
        # torch.nn.init functions: transformers 5 guards them so that loaded weights stay untouched.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, InternLM2RMSNorm):
            nn.init.ones_(module.weight)


class InternLM2Model(InternLM2PreTrainedModel):
    """The InternLM2 trunk: token embeddings, decoder layers and the final norm."""

    def __init__(self, config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([InternLM2DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = InternLM2RotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_embeddings

    def set_input_embeddings(self, value):
        self.tok_embeddings = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        use_cache=False,
        output_hidden_states=False,
        return_dict=True,
        **kwargs,
    ):
        """Returns `BaseModelOutputWithPast` (last_hidden_state; hidden_states when asked for).

        attention_mask: [b, seq] with 1 for tokens and 0 for padding, left or right; positions are
        then 0..seq-1 in every row, as in the published model (rotary attention depends only on
        distances, so left padding does not change the result). Without a mask, `position_ids` that
        restart inside a row mark packed sequences, which do not attend to each other.
        No key/value cache is kept: `use_cache` is accepted and ignored.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.tok_embeddings(input_ids)
        batch, seq_len = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        if attention_mask is not None and tuple(attention_mask.shape) != (batch, seq_len):
            raise ValueError(f"attention_mask must have shape {(batch, seq_len)}, got {tuple(attention_mask.shape)}")
        if position_ids is None:
            rotary_positions = torch.arange(seq_len, device=device)[None]
        else:
            rotary_positions = position_ids.to(device).view(-1, seq_len)

        if _registered_attention(self.config) is not None and attention_mask is None:
            mask = None  # packed rows: the registered attention function keeps the sequences apart
        else:
            mask = _attention_mask(
                attention_mask, None if position_ids is None else rotary_positions.expand(batch, -1), seq_len, device
            )
        position_embeddings = self.rotary_emb(inputs_embeds, rotary_positions)

        hidden_states = inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states = layer(hidden_states, position_embeddings=position_embeddings, attention_mask=mask, **kwargs)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        if not return_dict:
            return tuple(v for v in (hidden_states, all_hidden_states) if v is not None)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, hidden_states=all_hidden_states)


class InternLM2ForCausalLM(InternLM2PreTrainedModel):
    """The trunk (`model`) and the LM head (`output`)."""

    if _TRANSFORMERS_MAJOR >= 5:
        _tied_weights_keys = {"output.weight": "model.tok_embeddings.weight"}
    else:
        _tied_weights_keys = ["output.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.vocab_size = config.vocab_size
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.tok_embeddings

    def set_input_embeddings(self, value):
        self.model.tok_embeddings = value

    def get_output_embeddings(self):
        return self.output

    def set_output_embeddings(self, new_embeddings):
        self.output = new_embeddings

    def get_decoder(self):
        return self.model

    def set_decoder(self, decoder):
        self.model = decoder

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        use_cache=False,
        output_hidden_states=False,
        return_dict=True,
        **kwargs,
    ):
        """Logits [b, seq, vocab]; with `labels`, also the mean next-token cross-entropy (-100 ignored)."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.output(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].to(logits.device).reshape(-1)
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
        if not return_dict:
            rest = (logits,) + ((outputs.hidden_states,) if output_hidden_states else ())
            return ((loss,) + rest) if loss is not None else rest
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class InternLM2ForRewardModel(InternLM2PreTrainedModel):
    """The trunk (`model`) and a scalar value head (`v_head`), read at each row's last attended token.

    Conversations are scored as `tokenizer.apply_chat_template(...)` text, encoded without special
    tokens, with `config.reward_token_id` (when the model has one) appended unless the template wrote it.
    """

    def __init__(self, config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.v_head = nn.Linear(config.hidden_size, 1, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.tok_embeddings

    def set_input_embeddings(self, value):
        self.model.tok_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        """[b, seq] ids (and 0/1 mask, all ones when None) -> `logits` [b, 1] in fp32.

        The score is read at index `attention_mask.cumsum(-1).argmax(-1)`: the last attended token,
        for right and left padding alike.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        last = attention_mask.to(hidden.device).long().cumsum(dim=-1).argmax(dim=-1)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        picked = hidden[rows, last].to(self.v_head.weight.dtype)
        scores = self.v_head(picked).float()
        return SequenceClassifierOutputWithPast(logits=scores)

    # ---- scoring conversations ----------------------------------------------------------------

    def _encode(self, tokenizer, conversation):
        reward_token_id = getattr(self.config, "reward_token_id", None)
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=False)
        ids = list(tokenizer.encode(text, add_special_tokens=False))
        if reward_token_id is not None and (not ids or ids[-1] != reward_token_id):
            ids.append(reward_token_id)
        return ids

    @torch.no_grad()
    def get_score(self, tokenizer, conversation):
        """One conversation (a list of {"role", "content"} messages) -> its score as a float."""
        ids = torch.tensor([self._encode(tokenizer, conversation)], dtype=torch.long, device=self.device)
        return self(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0].item()

    @torch.no_grad()
    def get_scores(self, tokenizer, conversations):
        """A list of conversations -> a list of floats, scored in one right-padded batch.

        A single conversation (a list of message dicts) given alone returns a bare float.
        """
        if _is_single_conversation(conversations):
            return self.get_score(tokenizer, conversations)
        encoded = [self._encode(tokenizer, c) for c in conversations]
        if not encoded:
            return []
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        logits = self(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)).logits
        return logits[:, 0].tolist()

    @torch.no_grad()
    def compare(self, tokenizer, conversation1, conversation2, return_logits=False):
        """Whether conversation1 scores higher than conversation2 (and the two scores if asked)."""
        scores = self.get_scores(tokenizer, [conversation1, conversation2])
        better = scores[0] > scores[1]
        return (better, scores) if return_logits else better

    @torch.no_grad()
    def rank(self, tokenizer, conversations, return_logits=False):
        """Indices of the conversations from highest to lowest score (and the scores if asked)."""
        scores = self.get_scores(tokenizer, conversations)
        order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
        return (order, scores) if return_logits else order


def _is_single_conversation(conversations):
    return isinstance(conversations, (list, tuple)) and len(conversations) > 0 and isinstance(conversations[0], dict)

"""Attention for padding-free packed rows: each sequence attends only within itself, at its own cost.

transformers' padding-free path (position ids restarting per sequence, no attention mask) is
exact with SDPA, but it builds one dense block-diagonal mask over the whole row: attention then
costs row_length² instead of the sum of each sequence's length². On GPUs with flash-attn,
`flash_attention_2` reads the sequence offsets and attends per sequence. Elsewhere rmtrain
registers `rmtrain_packed_sdpa` through transformers' AttentionInterface (the supported
extension point): it runs causal SDPA on each sequence of the row separately.
"""

import importlib.util
from itertools import pairwise

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

PACKED_SDPA = "rmtrain_packed_sdpa"


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query [1, heads, total, dim], key/value [1, kv_heads, total, dim] -> [1, total, heads, dim].

    `cu_seq_lens_q` holds the sequence offsets of the packed row (from `pack_sequences`). Without
    them, a padded batch: transformers builds no mask for a registered function, so this is plain
    causal SDPA, exact for every real token of right-padded rows (`pad_sequences` pads right).
    """
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: query head i uses key/value head i // groups
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    dropout = dropout if module.training else 0.0
    bounds = cu_seq_lens_q.tolist()
    outputs = [
        F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
        )
        for start, end in pairwise(bounds)
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)


def packed_attention_implementation() -> str:
    """flash_attention_2 on a GPU with flash-attn installed, else rmtrain's per-sequence SDPA."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return PACKED_SDPA

"""Attention for padding-free packed rows: each sequence attends only within itself, at its own cost.

transformers' padding-free path (position ids restarting per sequence, no attention mask) is
exact with SDPA, but it builds one dense block-diagonal mask over the whole row: attention then
costs row_length² instead of the sum of each sequence's length². rmtrain registers one attention
function through transformers' AttentionInterface (the supported extension point), and
`RewardModel(use_varlen_attn=True)` uses it on every device. At each call it picks the kernel from
where the tensors are and what dtype they have (`packed_attention_kernel`), not from whether a GPU is
visible: the model may run on the CPU in fp32 on a GPU machine (`rmtrain convert`), or validate in
fp32 on a GPU.

- flash-attn's `flash_attn_varlen_func`: CUDA tensors in bf16 or fp16 (autocast's dtype), flash-attn
  installed, a GPU of compute capability 8 or newer (flash-attn 2 supports no older one);
- otherwise causal SDPA batched over buckets of similar-length sequences (`bucketed_sdpa`): one
  call per bucket, not one per sequence.

The sequence offsets reach the function as the `cu_seq_lens_q` tensor (on the model's device, for
flash-attn) and the bucket layout as `attention_buckets`, index tensors made once per batch on the
host (`rmtrain.scoring.pack_sequences`), so the SDPA path needs no device-to-host copy in any layer
(twice per layer under activation checkpointing).
"""

import functools
import importlib.util

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from rmtrain.scoring import bucket_indices

PACKED_SDPA = "rmtrain_packed_sdpa"  # the name configs and models carry (it dispatches to flash-attn too)
FLASH = "flash_attn_varlen"
SDPA = "bucketed_sdpa"


@functools.cache
def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@functools.cache
def _cuda_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def packed_attention_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """FLASH for CUDA + bf16/fp16 + flash-attn installed + compute capability >= 8, else SDPA."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16) or not flash_attn_installed():
        return SDPA
    index = device.index if device.index is not None else torch.cuda.current_device()
    return FLASH if _cuda_capability(index)[0] >= 8 else SDPA


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype attention computes in: the tensor's, or autocast's where the tensor is still fp32."""
    device_type = tensor.device.type
    if tensor.dtype == torch.float32 and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype


def flash_varlen(query, key, value, cu_seq_lens, max_seq_len, dropout, scaling):
    """query [total, heads, dim], key/value [total, kv_heads, dim] -> [total, heads, dim] (flash-attn)."""
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(
        query, key, value, cu_seq_lens, cu_seq_lens, max_seq_len, max_seq_len,
        dropout_p=dropout, softmax_scale=scaling, causal=True,
    )  # fmt: skip


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    attention_buckets: dict | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query [1, heads, total, dim], key/value [1, kv_heads, total, dim] -> [1, total, heads, dim].

    `cu_seq_lens_q` holds the sequence offsets of the packed row and `attention_buckets` its bucket
    layout (both from `pack_sequences`). Without them, a padded batch: transformers builds no mask for a registered
    function, so this is plain causal SDPA, exact for every real token of right-padded rows
    (`pad_sequences` pads right).
    """
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    dropout = dropout if module.training else 0.0
    dtype = _compute_dtype(query)
    if packed_attention_kernel(query.device, dtype) == FLASH:
        if max_length_q is None:
            max_length_q = int((cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).max())
        out = flash_varlen(
            query[0].transpose(0, 1).to(dtype),
            key[0].transpose(0, 1).to(dtype),
            value[0].transpose(0, 1).to(dtype),
            cu_seq_lens_q.to(device=query.device, dtype=torch.int32),
            max_length_q,
            dropout,
            scaling,
        )
        return out[None], None
    if attention_buckets is None:  # a row built without pack_sequences: one bucket per sequence
        attention_buckets = bucket_indices(sequence_lengths(cu_seq_lens_q))
    return bucketed_sdpa(query, key, value, attention_buckets, dropout, scaling), None


def sequence_lengths(cu_seq_lens: torch.Tensor) -> list[int]:
    return (cu_seq_lens[1:] - cu_seq_lens[:-1]).tolist()


def bucketed_sdpa(query, key, value, buckets: dict, dropout: float, scaling: float | None) -> torch.Tensor:
    """query [1, heads, total, dim], key/value [1, kv_heads, total, dim] -> [1, total, heads, dim].

    Per bucket of similar-length sequences (`rmtrain.scoring.bucket_indices`): gather its tokens into
    [sequences, heads, longest, dim], right-padded; one causal SDPA (a real token never reads a pad,
    which comes after it); keep the real tokens' outputs. Then put every token back in row order.
    """
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: query head i uses key/value head i // groups
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    q, k, v = query[0], key[0], value[0]  # [heads, total, dim]
    heads, dim = q.shape[0], q.shape[-1]
    outputs = []
    # index_select, not x[:, index]: its backward is index_add_ instead of an accumulating index_put_
    # (7% faster fwd+bwd on UltraFeedback rows on the CPU, tools/bench_packed_attention.py).
    for gather, real_slots, width in zip(buckets["gather"], buckets["real_slots"], buckets["widths"]):
        gather = gather.to(q.device, non_blocking=True)

        def bucket(x, gather=gather, width=width):
            return x.index_select(1, gather).view(heads, -1, width, dim).transpose(0, 1)

        out = F.scaled_dot_product_attention(
            bucket(q), bucket(k), bucket(v), dropout_p=dropout, is_causal=True, scale=scaling
        )  # [sequences, heads, width, dim]
        real = real_slots.to(q.device, non_blocking=True)
        outputs.append(out.transpose(0, 1).reshape(heads, -1, dim).index_select(1, real))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    out = out.index_select(1, buckets["restore"].to(q.device, non_blocking=True))  # [heads, total, dim], row order
    return out.transpose(0, 1)[None].contiguous()


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)


def packed_attention_implementation() -> str:
    """The attention implementation for packed rows on every device: rmtrain's, which picks its kernel
    per call (`packed_attention_kernel`)."""
    return PACKED_SDPA

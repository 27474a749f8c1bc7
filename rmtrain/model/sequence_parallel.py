"""Sequence parallelism (DeepSpeed-Ulysses): the ranks of a group each hold one contiguous part of the row.

Each rank of a sequence-parallel group (`rmtrain.parallel`) runs the trunk on its part of
`input_ids`, with the `position_ids` of the whole row (so rotary embeddings are those of one
process). Everything but attention is per token. Attention is registered through transformers'
AttentionInterface (`ULYSSES`): an all-to-all turns query/key/value from [this part of the row,
all heads] into [the whole row, heads / sp], the per-sequence attention of packed rows (or causal
SDPA for right-padded batches) runs on the whole row, and a second all-to-all turns the output back.
Heads and key/value heads must divide by sp (checked at start by the engine).

A sequence's score is read (`rmtrain.scoring.score_token_positions`) on the rank that holds its last
token; the others give 0 and a sum over the group gives every rank every score, so each rank forms
the same loss. The sum's backward is a sum as well (torch.distributed.nn.functional.all_reduce): the
gradient of the loss copied on sp ranks, so each rank's parameters get sp times their share and, summed
by DDP's average over all world ranks, the trunk's gradient is that of one process on the same batch.

The all-to-all is torch's autograd-aware `torch.distributed.nn.functional.all_to_all_single`:
DeepSpeed's `DistributedAttention` exchanges through `deepspeed.comm`, which needs DeepSpeed's own
communication set up (absent in DDP runs) and wraps a local attention module with its own call
signature, not a transformers attention function.
"""

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_autograd
from transformers import AttentionInterface

from rmtrain.errors import ConfigError
from rmtrain.model.packed_attention import packed_sdpa_attention
from rmtrain.parallel import sequence_parallel_group, sequence_parallel_rank, sequence_parallel_size
from rmtrain.scoring import bucket_indices, score_token_positions

ULYSSES = "rmtrain_ulysses"
PAD_ID = 0  # fills a row up to a multiple of sp; never scored, and causal attention keeps it out of real tokens


def _all_to_all(tensor: torch.Tensor, scatter_dim: int, gather_dim: int, group, size: int) -> torch.Tensor:
    """Cut `tensor` into `size` parts along scatter_dim, send part j to rank j, and join what arrives
    (in rank order) along gather_dim. Differentiable: the backward is the reverse exchange."""
    parts = torch.stack(tensor.chunk(size, dim=scatter_dim)).contiguous()  # [size, ...]
    received = dist_autograd.all_to_all_single(torch.empty_like(parts), parts, group=group)
    return torch.cat(received.unbind(0), dim=gather_dim)


def ulysses_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    sequence_parallel=None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query [b, heads, part, dim], key/value [b, kv_heads, part, dim] -> [b, part, heads, dim].

    `sequence_parallel`: the process group. The mask transformers may build covers only this part of
    the row and is not used: the inner attention is causal on the whole row (per sequence for packed
    rows, from `cu_seq_lens_q` / `attention_buckets` of the whole row).
    """
    size = dist.get_world_size(sequence_parallel)
    if query.shape[1] % size or key.shape[1] % size:
        raise ConfigError(
            f"sequence_parallel_size={size}: the model's {query.shape[1]} attention heads and "
            f"{key.shape[1]} key/value heads must divide by it"
        )
    query, key, value = (_all_to_all(t, 1, 2, sequence_parallel, size) for t in (query, key, value))
    out, _ = packed_sdpa_attention(module, query, key, value, None, **kwargs)  # [b, row, heads / sp, dim]
    return _all_to_all(out, 1, 2, sequence_parallel, size), None


AttentionInterface.register(ULYSSES, ulysses_attention)


def _padded_to_multiple(batch: dict, size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The whole row(s) filled up to a multiple of `size` tokens: input_ids, position_ids, attention kwargs.

    Packed: the fill is one more sequence after the last (its own positions and offset). Padded:
    positions 0.. across the row and no mask (causal attention is exact for right-padded rows).
    """
    input_ids = batch["input_ids"]
    length = input_ids.shape[1]
    fill = -length % size
    fill_ids = torch.full((input_ids.shape[0], fill), PAD_ID, dtype=input_ids.dtype, device=input_ids.device)
    input_ids = torch.cat([input_ids, fill_ids], dim=1)
    if "cu_seq_lens" not in batch:
        positions = torch.arange(length + fill, device=input_ids.device)[None].expand(input_ids.shape[0], -1)
        return input_ids, positions, {}
    bounds = tuple(batch["cu_seq_lens"].tolist())
    fill_positions = torch.arange(fill, device=input_ids.device)[None]
    positions = torch.cat([batch["position_ids"], fill_positions.to(batch["position_ids"].dtype)], dim=1)
    if fill:
        bounds = bounds + (length + fill,)
    cu_seq_lens = torch.tensor(bounds, dtype=torch.int32, device=batch["cu_seq_lens"].device)
    max_len = max(end - start for start, end in zip(bounds, bounds[1:]))
    attention = dict(
        cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens, max_length_q=max_len, max_length_k=max_len,
        attention_buckets=bucket_indices([end - start for start, end in zip(bounds, bounds[1:])]),
    )  # fmt: skip
    return input_ids, positions, attention


def score_sequences_in_parallel(trunk: torch.nn.Module, value_head: torch.nn.Module, batch: dict) -> torch.Tensor:
    """`rmtrain.scoring.score_sequences` with the row split over this rank's sequence-parallel group.

    Every rank of the group passes the same whole batch and gets the same [sequences] fp32 scores.
    The trunk must use `ULYSSES` attention (RewardModel sets it when sequence_parallel_size > 1).
    """
    group, size, part = sequence_parallel_group(), sequence_parallel_size(), sequence_parallel_rank()
    input_ids, positions, attention = _padded_to_multiple(batch, size)
    part_length = input_ids.shape[1] // size
    start, end = part * part_length, (part + 1) * part_length
    hidden = trunk(
        input_ids=input_ids[:, start:end],
        position_ids=positions[:, start:end],
        use_cache=False,
        sequence_parallel=group,
        **attention,
    ).last_hidden_state
    # The head on every token held here: it then takes part in every rank's backward (DDP expects
    # each parameter to get a gradient), also where this part holds no sequence's last token.
    token_scores = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float()  # [rows, part]
    rows, last = score_token_positions(batch)
    rows, last = rows.to(hidden.device), last.to(hidden.device)
    held = ((last >= start) & (last < end)).nonzero().squeeze(1)
    scores = torch.zeros(last.shape[0], dtype=torch.float32, device=hidden.device)
    scores = scores.index_put((held,), token_scores[rows[held], last[held] - start])
    return dist_autograd.all_reduce(scores, group=group)

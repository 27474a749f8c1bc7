"""Packed rows give the same per-pair scores and loss gradients as the same pairs padded (fp32, 1e-5)."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from rmtrain.data.collate import preference_collate_fn
from rmtrain.model import RewardModel
from rmtrain.model.internlm2 import InternLM2Config, InternLM2Model
from rmtrain.model.packed_attention import PACKED_SDPA
from rmtrain.scoring import pack_sequences

TOL = 1e-5
SHAPE = dict(
    vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128,
)  # fmt: skip


def _trunk(family: str):
    torch.manual_seed(0)
    if family == "llama":
        return LlamaModel(LlamaConfig(**SHAPE, attn_implementation="sdpa")).float()
    return InternLM2Model(InternLM2Config(**SHAPE, bias=False)).float()


def _pairs(seed: int = 1, count: int = 6) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)

    def ids():
        length = int(torch.randint(3, 40, (1,), generator=generator))
        return torch.randint(5, SHAPE["vocab_size"], (length,), generator=generator).tolist()

    return [{"chosen_ids": ids(), "rejected_ids": ids(), "margin": 0.5 * (i % 2)} for i in range(count)]


def _models(family: str):
    """The same weights twice: one scoring padded batches, one packed rows."""
    padded = RewardModel(
        _trunk(family), reward_token_id=3, penalty_type="log_barrier", use_activation_checkpointing=False
    )
    torch.nn.init.normal_(padded.v_head.weight, std=0.5)  # the head starts at zero; make scores differ
    packed = copy.deepcopy(padded)
    packed.model.set_attn_implementation(PACKED_SDPA)
    assert packed.model.config._attn_implementation == PACKED_SDPA
    assert padded.model.config._attn_implementation == "sdpa"
    return padded.train(), packed.train()


def _split_bins(pairs: list[dict], sizes: list[int]) -> list[list[dict]]:
    bins, start = [], 0
    for size in sizes:
        bins.append(pairs[start : start + size])
        start += size
    return bins


@pytest.mark.parametrize("family", ["llama", "internlm2"])
def test_packed_scores_and_gradients_equal_padded(family):
    padded_model, packed_model = _models(family)
    pairs = _pairs()
    padded_batch = preference_collate_fn(pairs, pad_token_id=0)["data"]
    # Two bins in one micro-batch: the collate lays all their sequences in one row.
    packed_batch = preference_collate_fn(_split_bins(pairs, [4, 2]), use_varlen_attn=True)["data"]
    assert packed_batch["input_ids"].shape == (1, padded_batch["attention_mask"].sum())

    padded_out = padded_model(padded_batch, mode="loss")
    packed_out = packed_model(packed_batch, mode="loss")
    padded_out["loss"].backward()
    packed_out["loss"].backward()

    with torch.no_grad():
        torch.testing.assert_close(packed_model.score(packed_batch), padded_model.score(padded_batch), atol=TOL, rtol=0)
    torch.testing.assert_close(packed_out["loss"], padded_out["loss"], atol=TOL, rtol=0)
    assert packed_out["num_tokens"] == padded_out["num_tokens"]
    for (name, a), (_, b) in zip(packed_model.named_parameters(), padded_model.named_parameters()):
        assert a.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, atol=TOL, rtol=0, msg=name)


@pytest.mark.parametrize("family", ["llama", "internlm2"])
def test_per_sequence_attention_equals_dense_block_mask(family):
    """transformers' own padding-free path (dense block-diagonal mask) and the per-sequence function agree."""
    dense, per_sequence = _models(family)
    sequences = [p["chosen_ids"] for p in _pairs()] + [p["rejected_ids"] for p in _pairs()]
    row = pack_sequences(sequences)
    with torch.no_grad():
        torch.testing.assert_close(per_sequence.score(row), dense.score(row), atol=TOL, rtol=0)


def test_sequences_in_a_row_do_not_see_each_other():
    """Changing one sequence of a packed row leaves the scores of the others unchanged."""
    _, model = _models("llama")
    sequences = [p["chosen_ids"] for p in _pairs(count=4)]
    changed = [list(seq) for seq in sequences]
    changed[1] = [(token + 7) % SHAPE["vocab_size"] for token in changed[1]]
    with torch.no_grad():
        before = model.score(pack_sequences(sequences))
        after = model.score(pack_sequences(changed))
    assert not torch.allclose(before[1], after[1])
    torch.testing.assert_close(after[[0, 2, 3]], before[[0, 2, 3]], atol=TOL, rtol=0)


def test_reward_model_selects_the_packed_attention():
    model = RewardModel(_trunk("llama"), use_varlen_attn=True, use_activation_checkpointing=False)
    assert model.model.config._attn_implementation == PACKED_SDPA


def _reference_attention(q, k, v, lengths):
    """Causal SDPA on each sequence separately: what the bucketed kernel must reproduce."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    outputs, start = [], 0
    for n in lengths:
        part = (t[:, :, start : start + n] for t in (q, k, v))
        outputs.append(torch.nn.functional.scaled_dot_product_attention(*part, is_causal=True))
        start += n
    return torch.cat(outputs, dim=2).transpose(1, 2)


@pytest.mark.parametrize(
    "lengths, call_cost",
    [
        ([5, 1, 9, 1, 9, 3], 0),  # cheap calls: buckets of one sequence, or of equal lengths only
        ([5, 1, 9, 1, 9, 3], 10**12),  # one bucket: every sequence padded to 9
        ([1], 64 * 64),  # a single token
        ([1, 1, 1], 0),  # equal lengths of 1 share a bucket
        ([40, 2, 39, 3, 17, 1, 1, 25], 256),  # several buckets of mixed sizes
    ],
)
def test_bucketed_attention_equals_per_sequence_attention(lengths, call_cost):
    from rmtrain.model.packed_attention import bucketed_sdpa
    from rmtrain.scoring import bucket_indices

    generator = torch.Generator().manual_seed(sum(lengths) + call_cost % 97)
    total = sum(lengths)
    q, k, v = (torch.randn(1, heads, total, 8, generator=generator, requires_grad=True) for heads in (4, 2, 2))
    out = bucketed_sdpa(q, k, v, bucket_indices(lengths, call_cost), 0.0, None)
    expected = _reference_attention(q, k, v, lengths)
    assert out.shape == (1, total, 4, 8)
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)
    weights = torch.randn(out.shape, generator=generator)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def test_attention_buckets_cover_every_sequence_once_longest_first():
    from rmtrain.scoring import attention_buckets

    lengths = [5, 1, 9, 1, 9, 3, 30, 2]
    for call_cost in (0, 100, 64 * 64, 10**12):
        buckets = attention_buckets(lengths, call_cost)
        assert sorted(i for bucket in buckets for i in bucket) == list(range(len(lengths)))
        flat = [lengths[i] for bucket in buckets for i in bucket]
        assert flat == sorted(lengths, reverse=True)
    assert len(attention_buckets(lengths, 10**12)) == 1  # calls dearer than any padding: one bucket
    # Calls for free: no padding at all, so a bucket holds sequences of one length only.
    assert all(len({lengths[i] for i in bucket}) == 1 for bucket in attention_buckets(lengths, 0))

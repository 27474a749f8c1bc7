"""Packing pairs into bins, the packed collate, and length-grouped padded batches."""

import datasets
import pytest
import torch

from rmtrain.data import build_demo_preference_data, build_demo_tokenizer, build_preference_dataset
from rmtrain.data import packing as packing_module
from rmtrain.data.collate import preference_collate_fn
from rmtrain.data.packing import LengthGroupedSampler, PackedPreferenceDataset, pack_pairs, padded_fraction
from rmtrain.errors import ConfigError

LENGTHS = [(3, 5), (10, 2), (7, 7), (1, 1), (20, 30), (4, 4), (9, 1), (6, 2)]


def test_pack_pairs_keeps_every_pair_once_and_respects_the_bin_size():
    bins = pack_pairs(LENGTHS, max_packed_length=50, seed=0)
    assert sorted(i for b in bins for i in b) == list(range(len(LENGTHS)))
    assert all(sum(sum(LENGTHS[i]) for i in b) <= 50 for b in bins)
    assert len(bins) < len(LENGTHS)  # pairs do share bins


def test_pack_pairs_is_deterministic_for_a_seed():
    assert pack_pairs(LENGTHS, 50, seed=3) == pack_pairs(LENGTHS, 50, seed=3)
    orders = {tuple(map(tuple, pack_pairs(LENGTHS, 50, seed=s))) for s in range(5)}
    assert len(orders) > 1  # the seed does change the packing


def test_packed_collate_lays_sequences_end_to_end_with_restarting_positions():
    bins = [
        [{"chosen_ids": [1, 2, 3], "rejected_ids": [4, 5], "margin": 1.0}],
        [{"chosen_ids": [6], "rejected_ids": [7, 8], "margin": None}],
    ]
    data = preference_collate_fn(bins, use_varlen_attn=True)["data"]
    # chosen sides of both pairs, then their rejected sides
    assert data["input_ids"].tolist() == [[1, 2, 3, 6, 4, 5, 7, 8]]
    assert data["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1, 0, 1]]
    assert data["cu_seq_lens"].tolist() == [0, 3, 4, 6, 8]
    assert data["max_seq_len"] == 3
    assert data["margin"].tolist() == [1.0, 0.0]
    assert data["num_tokens"] == 8
    assert "attention_mask" not in data


def _demo_pairs(num_pairs=200, **kwargs):
    return build_preference_dataset(
        build_demo_preference_data(num_pairs=num_pairs, seed=1), build_demo_tokenizer(), max_length=64,
        is_dpo=False, is_reward=True, reward_token_id=3, num_proc=1, **kwargs,
    )  # fmt: skip


def test_packed_dataset_from_the_builder_holds_every_pair():
    packed = _demo_pairs(use_varlen_attn=True, max_packed_length=512, pack_seed=7)
    assert isinstance(packed, PackedPreferenceDataset)
    items = [pair for index in range(len(packed)) for pair in packed[index]]
    assert len(items) == 200
    assert all(len(p["chosen_ids"]) + len(p["rejected_ids"]) <= 128 for p in items)
    assert all(sum(len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in packed[i]) <= 512 for i in range(len(packed)))
    assert "packed into" in packed.summary_text()
    again = _demo_pairs(use_varlen_attn=True, max_packed_length=512, pack_seed=7)
    assert packed.bins == again.bins


def test_bin_smaller_than_a_pair_is_a_config_error():
    with pytest.raises(ConfigError, match="max_packed_length"):
        _demo_pairs(use_varlen_attn=True, max_packed_length=100)  # a pair can hold 2 x 64 tokens


class _Lengths:
    """A stand-in data set: only `pairs` columns are read by the sampler."""

    def __init__(self, lengths):
        self.pairs = datasets.Dataset.from_dict(
            {"chosen_ids": [[0] * c for c, _ in lengths], "rejected_ids": [[0] * r for _, r in lengths]}
        )


def _sampler(lengths, batch_size, rank=0, world_size=1, monkeypatch=None, **kwargs):
    monkeypatch.setattr(packing_module, "data_parallel_rank_and_size", lambda: (rank, world_size))
    return LengthGroupedSampler(_Lengths(lengths), batch_size=batch_size, seed=0, **kwargs)


def _random_lengths(n=500, seed=0):
    """Pairs whose two sides have similar lengths (they share the prompt), as in real data."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randint(20, 400, (n,), generator=generator)
    rejected = chosen + torch.randint(-15, 15, (n,), generator=generator)
    return list(zip(chosen.tolist(), rejected.tolist()))


def test_length_grouped_batches_cover_every_pair_and_pad_less(monkeypatch):
    lengths = _random_lengths()
    sampler = _sampler(lengths, 8, monkeypatch=monkeypatch)
    order = list(sampler)
    assert len(order) == len(sampler) == 504  # rounded up to whole batches, like DefaultSampler
    assert set(order) == set(range(500))
    batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    shuffled = torch.randperm(500, generator=torch.Generator().manual_seed(1)).tolist()
    random_batches = [shuffled[i : i + 8] for i in range(0, 496, 8)]
    assert padded_fraction(lengths, batches) < 0.5 * padded_fraction(lengths, random_batches)


def test_length_grouped_sampler_is_seeded_per_epoch(monkeypatch):
    lengths = _random_lengths()
    sampler = _sampler(lengths, 8, monkeypatch=monkeypatch)
    first, again = list(sampler), list(sampler)
    sampler.set_epoch(1)
    assert first == again
    assert list(sampler) != first


def test_ranks_split_each_global_batch(monkeypatch):
    """Two ranks with 4 pairs each see, step by step, the pairs one rank with 8 pairs sees."""
    lengths = _random_lengths()
    one = list(_sampler(lengths, 8, monkeypatch=monkeypatch))
    rank0 = list(_sampler(lengths, 4, rank=0, world_size=2, monkeypatch=monkeypatch))
    rank1 = list(_sampler(lengths, 4, rank=1, world_size=2, monkeypatch=monkeypatch))
    assert len(rank0) == len(rank1)
    for step in range(len(rank0) // 4):
        together = rank0[step * 4 : step * 4 + 4] + rank1[step * 4 : step * 4 + 4]
        assert together == one[step * 8 : step * 8 + 8]


MAP_FN_RECORDS = {
    "orpo_dpo_mix_40k_map_fn": {
        "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
    },
    "intel_orca_dpo_map_fn": {"system": "be brief", "question": "q", "chosen": "good", "rejected": "bad"},
    "hh_rlhf_map_fn": {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"},
    "sharegpt_preference_map_fn": {
        "conversations": [{"from": "human", "value": "q"}],
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    },
    "string_preference_map_fn": {"prompt": "q", "chosen": "good", "rejected": "bad"},
    "messages_preference_map_fn": {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    },
}


@pytest.mark.parametrize("map_fn", sorted(MAP_FN_RECORDS))
def test_packing_works_with_every_map_function(map_fn):
    records = datasets.Dataset.from_list([MAP_FN_RECORDS[map_fn]] * 5)
    packed = build_preference_dataset(
        records, build_demo_tokenizer(), max_length=32, dataset_map_fn=map_fn, is_dpo=False, is_reward=True,
        reward_token_id=3, num_proc=1, use_varlen_attn=True, max_packed_length=64,
    )  # fmt: skip
    batch = preference_collate_fn([packed[i] for i in range(len(packed))], use_varlen_attn=True)["data"]
    assert batch["cu_seq_lens"].numel() == 2 * 5 + 1
    ends = batch["cu_seq_lens"][1:].long() - 1
    assert (batch["input_ids"][0, ends] == 3).all()  # every sequence ends with its reward token

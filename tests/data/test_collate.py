"""Tests for rmtrain.data.collate.preference_collate_fn."""

import torch

from rmtrain.data.collate import preference_collate_fn

INSTANCES = [
    {"chosen_ids": [1, 2, 3], "rejected_ids": [4, 5], "margin": 1.5},
    {"chosen_ids": [6], "rejected_ids": [7, 8, 9, 10], "margin": None},
    {"chosen_ids": [11, 12], "rejected_ids": [13], "margin": 0.0},
]


def test_rows_are_chosen_then_rejected_right_padded():
    out = preference_collate_fn(INSTANCES, pad_token_id=0)
    assert set(out) == {"data", "data_samples"}
    assert out["data_samples"] is None
    data = out["data"]
    assert data["input_ids"].shape == (6, 4)
    assert data["input_ids"].dtype == torch.long
    assert data["input_ids"].tolist() == [
        [1, 2, 3, 0],
        [6, 0, 0, 0],
        [11, 12, 0, 0],
        [4, 5, 0, 0],
        [7, 8, 9, 10],
        [13, 0, 0, 0],
    ]


def test_attention_mask():
    data = preference_collate_fn(INSTANCES, pad_token_id=0)["data"]
    assert data["attention_mask"].shape == data["input_ids"].shape
    assert data["attention_mask"].tolist() == [
        [1, 1, 1, 0],
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 0, 0, 0],
    ]
    assert data["attention_mask"].sum().item() == 13


def test_custom_pad_id():
    data = preference_collate_fn(INSTANCES, pad_token_id=77)["data"]
    ids, mask = data["input_ids"], data["attention_mask"]
    assert torch.all(ids[mask == 0] == 77)
    assert not torch.any(ids[mask == 1] == 77)
    assert ids[1].tolist() == [6, 77, 77, 77]


def test_margin_tensor_none_is_zero():
    margin = preference_collate_fn(INSTANCES, pad_token_id=0)["data"]["margin"]
    assert margin.dtype == torch.float32
    assert margin.shape == (3,)
    assert margin.tolist() == [1.5, 0.0, 0.0]


def test_missing_margin_key_is_zero():
    data = preference_collate_fn([{"chosen_ids": [1], "rejected_ids": [2]}], pad_token_id=0)["data"]
    assert data["margin"].tolist() == [0.0]
    assert data["input_ids"].tolist() == [[1], [2]]

"""Holding records out for validation: the seeded split and the train/val parts of a preference data set."""

import pytest

from rmtrain.data import build_demo_preference_data, build_preference_dataset
from rmtrain.data.split import split_record_indices, val_record_count
from rmtrain.errors import ConfigError, DataError


@pytest.mark.parametrize(
    "num_records, val_split, expected",
    [(100, 0.1, 10), (2222, 0.1, 222), (3, 0.1, 1), (10, 3, 3), (10, 3.0, 3), (10, 0.94, 9), (10, 0.01, 1)],
)
def test_val_record_count(num_records, val_split, expected):
    assert val_record_count(num_records, val_split) == expected


@pytest.mark.parametrize(
    "val_split, match",
    [
        (10, "leaving none"),
        (1.5, "whole record count"),
        (-0.1, "share"),
        (True, "share"),
        ("0.1", "share"),
        (1, "leaving none"),
    ],
)
def test_val_record_count_refuses(val_split, match):
    with pytest.raises(ConfigError, match=match):
        val_record_count(10 if val_split != 1 else 1, val_split)


def test_split_is_seeded_disjoint_complete_and_in_file_order():
    parts = split_record_indices(50, 0.2, split_seed=3)
    assert parts == split_record_indices(50, 0.2, split_seed=3)
    assert parts != split_record_indices(50, 0.2, split_seed=4)
    assert len(parts["val"]) == 10 and sorted(parts["train"] + parts["val"]) == list(range(50))
    assert parts["train"] == sorted(parts["train"]) and parts["val"] == sorted(parts["val"])


def _build(demo_tokenizer, records, **kwargs):
    return build_preference_dataset(
        records, demo_tokenizer, max_length=96, is_dpo=False, is_reward=True, reward_token_id=3, num_proc=1, **kwargs
    )


def test_train_and_val_parts_keep_their_record_index(demo_tokenizer):
    records = build_demo_preference_data(num_pairs=40, seed=0)
    whole = _build(demo_tokenizer, records)
    train = _build(demo_tokenizer, records, val_split=0.25, split_seed=1, split="train")
    val = _build(demo_tokenizer, records, val_split=0.25, split_seed=1, split="val")
    assert list(whole.pairs["record_index"]) == list(range(40))
    train_index, val_index = list(train.pairs["record_index"]), list(val.pairs["record_index"])
    assert len(val_index) == 10 and sorted(train_index + val_index) == list(range(40))
    assert val_index == split_record_indices(40, 0.25, 1)["val"]
    for position, index in enumerate(val_index):  # the same pair as in the unsplit data set
        assert val[position] == whole[index]
    assert set(val[0]) == {"chosen_ids", "rejected_ids", "margin"}  # items are unchanged
    assert "val part: 10 of 40 records" in val.summary_text()
    assert "train part: 30 of 40 records" in train.summary_text()
    assert val.metainfo == {"pairs": 10}
    assert list(val.in_memory().pairs["record_index"]) == val_index


def test_errors_name_the_file_record_of_a_split(demo_tokenizer):
    records = [{"prompt": "p", "chosen": "c", "rejected": "r"} for _ in range(6)]
    records[4] = {"prompt": "p", "chosen": "c"}
    import datasets

    dataset = datasets.Dataset.from_list(records)
    part = "val" if 4 in split_record_indices(6, 2, 0)["val"] else "train"
    with pytest.raises(DataError, match="record 4, field 'rejected'"):
        _build(demo_tokenizer, dataset, val_split=2, split=part)
    skipped = _build(demo_tokenizer, dataset, val_split=2, split=part, skip_bad_records=True)
    assert 4 not in list(skipped.pairs["record_index"]) and skipped.summary["dropped_pairs"] == 1


def test_split_settings_are_checked(demo_tokenizer):
    records = build_demo_preference_data(num_pairs=10, seed=0)
    with pytest.raises(ConfigError, match="split='val' needs val_split"):
        _build(demo_tokenizer, records, split="val")
    with pytest.raises(ConfigError, match="split must be one of"):
        _build(demo_tokenizer, records, val_split=0.1, split="test")

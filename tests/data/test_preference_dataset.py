"""Tests for rmtrain.data.preference_dataset.build_preference_dataset and rmtrain.data.loading."""

import json

import datasets
import pytest

from rmtrain.data.demo import build_demo_tokenizer
from rmtrain.data.loading import describe_source, load_jsonl_dataset, load_records
from rmtrain.data.preference_dataset import PreferenceDataset, build_preference_dataset
from rmtrain.errors import ConfigError, DataError, RmtrainError
from rmtrain.scoring import encode_conversation

REWARD = 3
LONG_TEXT = "Write the word river in capital letters please. " * 8
MAX_LENGTH = 48


@pytest.fixture(autouse=True)
def _hf_cache_in_tmp(tmp_path, monkeypatch):
    """Keep `datasets` cache files (JSON builder, map results) out of the user's home."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _msgs(role, text):
    return [{"role": role, "content": text}]


def _record(prompt="What is 2 + 2?", chosen="2 + 2 = 4", rejected="2 + 2 = 5"):
    return {
        "prompt": _msgs("user", prompt) if prompt else [],
        "chosen": _msgs("assistant", chosen),
        "rejected": _msgs("assistant", rejected),
    }


def _build(dataset, tokenizer=None, **kwargs):
    kwargs.setdefault("max_length", MAX_LENGTH)
    kwargs.setdefault("is_dpo", False)
    kwargs.setdefault("is_reward", True)
    kwargs.setdefault("reward_token_id", REWARD)
    kwargs.setdefault("num_proc", 1)
    return build_preference_dataset(dataset, tokenizer if tokenizer is not None else build_demo_tokenizer(), **kwargs)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


# --- in-memory data set --------------------------------------------------------------------------


def test_in_memory_custom_format(demo_tokenizer):
    records = [_record(), _record("Name a colour.", "Red", "Well, there are many colours.")]
    out = _build(datasets.Dataset.from_list(records), demo_tokenizer)
    assert isinstance(out, PreferenceDataset)
    assert len(out) == 2
    for i, record in enumerate(records):
        item = out[i]
        assert set(item) == {"chosen_ids", "rejected_ids", "margin"}
        assert item["margin"] is None
        for side in ("chosen", "rejected"):
            ids = item[f"{side}_ids"]
            assert ids[-1] == REWARD and ids.count(REWARD) == 1
            assert len(ids) <= MAX_LENGTH
            expected = encode_conversation(
                demo_tokenizer, record["prompt"], record[side], MAX_LENGTH, REWARD, demo_tokenizer.chat_template
            )
            assert ids == expected.input_ids
        assert demo_tokenizer.decode(item["chosen_ids"]).endswith(
            record["chosen"][0]["content"] + "<|im_end|>\n<|reward|>"
        )
    summary = out.summary
    assert summary["pairs"] == 2
    assert summary["dropped_pairs"] == 0
    assert summary["prompt_cut_pairs"] == summary["chosen_cut_pairs"] == summary["rejected_cut_pairs"] == 0
    assert summary["max_length"] == MAX_LENGTH
    assert summary["tokens"] == sum(len(out[i]["chosen_ids"]) + len(out[i]["rejected_ids"]) for i in range(2))
    assert "2 pairs" in out.summary_text()


def test_margin_is_kept():
    records = [dict(_record(), margin=1.5), dict(_record(), margin=None)]
    out = _build(datasets.Dataset.from_list(records))
    assert out[0]["margin"] == 1.5
    assert out[1]["margin"] is None


def test_summary_counts_truncation():
    records = [
        _record(),  # fits
        _record(prompt=LONG_TEXT),  # prompt cut on both sides
        _record(prompt=None, chosen=LONG_TEXT),  # chosen response cut (no prompt to cut)
        _record(prompt=None, rejected=LONG_TEXT),  # rejected response cut
        # everything cut (the rejected side starts differently: identical sides would be dropped)
        _record(prompt=LONG_TEXT, chosen=LONG_TEXT, rejected="No. " + LONG_TEXT),
    ]
    out = _build(datasets.Dataset.from_list(records))
    s = out.summary
    assert s["pairs"] == 5
    assert s["prompt_cut_pairs"] == 2
    assert s["chosen_cut_pairs"] == 2
    assert s["rejected_cut_pairs"] == 2
    assert s["dropped_pairs"] == 0
    for i in range(5):  # truncation keeps every pair, within max_length, reward token last
        for side in ("chosen_ids", "rejected_ids"):
            assert len(out[i][side]) <= MAX_LENGTH
            assert out[i][side][-1] == REWARD
    assert len(out[1]["chosen_ids"]) == MAX_LENGTH


def test_tokenizer_as_config_dict():
    out = _build(datasets.Dataset.from_list([_record()]), tokenizer=dict(type=build_demo_tokenizer))
    assert len(out) == 1 and out[0]["chosen_ids"][-1] == REWARD


def test_dataset_as_config_dict():
    cfg = dict(type=datasets.Dataset.from_list, mapping=[_record(), _record()])
    out = _build(cfg)
    assert len(out) == 2


def test_string_map_fn_by_name(demo_tokenizer):
    records = [
        {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5", "system": "Be brief."},
        {"prompt": "Name a fruit.", "chosen": "Apple", "rejected": "I like many fruits.", "system": ""},
    ]
    out = _build(datasets.Dataset.from_list(records), demo_tokenizer, dataset_map_fn="string_preference_map_fn")
    assert len(out) == 2
    text = demo_tokenizer.decode(out[0]["chosen_ids"])
    assert (
        text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n<|reward|>"
    )
    assert demo_tokenizer.decode(out[1]["rejected_ids"]).startswith("<|im_start|>user\nName a fruit.")


def test_callable_map_fn():
    def my_map_fn(record):
        return {"prompt": record["q"], "chosen": record["good"], "rejected": record["bad"]}

    records = [{"q": "Hi?", "good": "Hello!", "bad": "Go away."}]
    out = _build(datasets.Dataset.from_list(records), dataset_map_fn=my_map_fn)
    assert len(out) == 1


def test_deepcopy_shares():
    import copy

    out = _build(datasets.Dataset.from_list([_record()]))
    assert copy.deepcopy(out) is out


# --- JSONL -----------------------------------------------------------------------------------------


def test_jsonl_file(tmp_path, demo_tokenizer):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [_record(), _record("Name a colour.", "Red", "Blue and green")])
    cfg = dict(type=load_jsonl_dataset, data_files=str(path))
    out = _build(cfg, demo_tokenizer)
    assert len(out) == 2
    assert out.summary["source"] == str(path)
    for i in range(2):
        assert out[i]["chosen_ids"][-1] == REWARD and out[i]["rejected_ids"][-1] == REWARD
    assert "Blue and green" in demo_tokenizer.decode(out[1]["rejected_ids"])


def test_load_jsonl_dataset_directory_and_errors(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", [_record()])
    _write_jsonl(tmp_path / "b.jsonl", [_record(), _record()])
    assert len(load_jsonl_dataset(data_dir=str(tmp_path))) == 3
    with pytest.raises(RmtrainError, match="data file not found: .*missing.jsonl"):
        load_jsonl_dataset(data_files=str(tmp_path / "missing.jsonl"))
    with pytest.raises(RmtrainError, match="no \\*.jsonl files"):
        load_jsonl_dataset(data_dir=str(tmp_path / "empty_dir_that_does_not_exist"))
    with pytest.raises(ConfigError):
        load_jsonl_dataset()


def test_describe_source():
    assert describe_source(dict(type=load_jsonl_dataset, data_files="/x/a.jsonl")) == "/x/a.jsonl"
    assert describe_source(dict(data_files=["/x/a.jsonl", "/x/b.jsonl"])) == "/x/a.jsonl (+1 more files)"
    assert describe_source(dict(path="org/name", data_files={"train": "t.jsonl"})) == "t.jsonl"
    assert describe_source(datasets.Dataset.from_list([_record()])) == "the config's dataset"


def test_load_records_dataset_dict_split():
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([_record()])})
    assert len(load_records(dd)) == 1
    with pytest.raises(ValueError, match="test"):
        load_records(dd, split="test")


def _bad_records(bad):
    records = [_record(), _record("Name a colour.", "Red", "Blue"), bad, _record("Hi", "Hello", "Go")]
    return records


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"prompt": _msgs("user", "Hi"), "rejected": _msgs("assistant", "No")}, "chosen"),
        (_record(chosen=""), "chosen"),
        (_record(rejected="   "), "rejected"),
    ],
    ids=["missing_chosen", "empty_chosen", "blank_rejected"],
)
def test_bad_record_error_names_file_record_field(tmp_path, bad, field):
    path = _write_jsonl(tmp_path / "bad.jsonl", _bad_records(bad))
    with pytest.raises(DataError) as info:
        _build(dict(type=load_jsonl_dataset, data_files=str(path)))
    message = str(info.value)
    assert str(path) in message
    assert "record 2" in message
    assert f"'{field}'" in message
    assert info.value.index == 2 and info.value.field == field and info.value.source == str(path)


def test_bad_in_memory_record_raises():
    bad = {"prompt": _msgs("user", "Hi"), "rejected": _msgs("assistant", "No")}
    with pytest.raises(DataError, match=r"record 2, field 'chosen'"):
        _build(datasets.Dataset.from_list(_bad_records(bad)))


def test_skip_bad_records(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", _bad_records(_record(chosen="")))
    out = _build(dict(type=load_jsonl_dataset, data_files=str(path)), skip_bad_records=True)
    assert len(out) == 3
    assert out.summary["pairs"] == 3
    assert out.summary["dropped_pairs"] == 1
    assert "1 dropped" in out.summary_text()


def test_skip_bad_records_in_memory_missing_field():
    bad = {"prompt": _msgs("user", "Hi"), "rejected": _msgs("assistant", "No")}
    out = _build(datasets.Dataset.from_list(_bad_records(bad)), skip_bad_records=True)
    assert len(out) == 3
    assert out.summary["dropped_pairs"] == 1


def test_all_records_bad_raises():
    records = [_record(chosen=""), _record(rejected="")]
    with pytest.raises(DataError, match="no usable record"):
        _build(datasets.Dataset.from_list(records), skip_bad_records=True)


@pytest.mark.parametrize(
    "empty",
    [datasets.Dataset.from_list([]), datasets.Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})],
    ids=["no_columns", "no_rows"],
)
def test_empty_dataset_raises(empty):
    with pytest.raises(DataError, match="empty"):
        _build(empty)


def test_empty_jsonl_file_raises(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="empty") as info:
        _build(dict(type=load_jsonl_dataset, data_files=str(path)))
    assert str(path) in str(info.value)


# --- configuration errors ----------------------------------------------------------------------


def test_is_dpo_raises():
    with pytest.raises(ConfigError, match="is_dpo=False"):
        _build(datasets.Dataset.from_list([_record()]), is_dpo=True)


def test_not_reward_raises():
    with pytest.raises(ConfigError, match="is_reward=True"):
        _build(datasets.Dataset.from_list([_record()]), is_reward=False)


def test_reward_token_outside_vocab_raises():
    with pytest.raises(ConfigError, match="reward_token_id=5000"):
        _build(datasets.Dataset.from_list([_record()]), reward_token_id=5000)


def test_reward_token_is_pad_raises():
    with pytest.raises(ConfigError, match="pad"):
        _build(datasets.Dataset.from_list([_record()]), reward_token_id=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_length=4), "max_length"),
        (dict(use_varlen_attn=True, max_packed_length=20), "max_packed_length"),
        (dict(is_reference=True), "reference"),
    ],
)
def test_other_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _build(datasets.Dataset.from_list([_record()]), **kwargs)


def test_no_chat_template_raises_and_named_template_works():
    tok = build_demo_tokenizer()
    tok.chat_template = None
    data = datasets.Dataset.from_list([_record()])
    with pytest.raises(ConfigError, match="chat template"):
        _build(data, tok)
    out = _build(data, tok, chat_template="chatml")
    assert len(out) == 1
    assert tok.decode(out[0]["chosen_ids"]) == (
        "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n2 + 2 = 4<|im_end|>\n<|reward|>"
    )


def test_no_reward_token():
    out = _build(datasets.Dataset.from_list([_record()]), reward_token_id=-1)
    assert REWARD not in out[0]["chosen_ids"]


# --- pairs without a preference ---------------------------------------------------------------------


def test_identical_pairs_are_counted_and_dropped(tmp_path):
    records = [_record(), _record("Say hi", "Hi!", "Hi!"), _record("Name a colour.", "Red", "Blue")]
    path = _write_jsonl(tmp_path / "pairs.jsonl", records)
    out = _build(dict(type=load_jsonl_dataset, data_files=str(path)))
    assert len(out) == 2 and list(out.pairs["record_index"]) == [0, 2]
    assert out.summary["identical_pairs"] == 1 and out.summary["dropped_pairs"] == 1
    assert "1 with chosen identical to rejected" in out.summary_text()


def test_a_data_set_of_only_identical_pairs_is_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [_record("Say hi", "Hi!", "Hi!"), _record("Yes?", "Yes", "Yes")])
    with pytest.raises(DataError) as info:
        _build(dict(type=load_jsonl_dataset, data_files=str(path)))
    assert info.value.source == str(path) and info.value.index == 0 and info.value.field == "rejected"
    assert "identical" in str(info.value)


# --- reference-conditioned (POLAR) data --------------------------------------------------------


def _reference_record(prompt="a b c d", reference="x y", chosen="5", rejected="6", wrapper=None):
    record = _record(prompt, chosen, rejected)
    record["reference"] = _msgs("assistant", reference)
    if wrapper is not None:
        record["wrapper"] = wrapper
    return record


def test_reference_data_uses_the_reference_rule_and_counts_cuts():
    from rmtrain.scoring import encode_reference_sequence

    tokenizer = build_demo_tokenizer()
    records = [_reference_record(wrapper="sft"), _reference_record(reference="x y z w", wrapper="pretrain")]
    pairs = _build(
        datasets.Dataset.from_list(records), tokenizer, is_reference=True, max_response_length=2, max_length=64
    )
    for record, item in zip(records, pairs):
        for side in ("chosen", "rejected"):
            expected = encode_reference_sequence(
                tokenizer, record["prompt"], record["reference"], record[side], 64, REWARD, 2,
                record.get("wrapper", "sft"),
            ).input_ids  # fmt: skip
            assert item[f"{side}_ids"] == expected
    assert pairs.summary["reference_cut_pairs"] == 1  # the second reference keeps its first 2 of 4 tokens
    assert pairs.summary["prompt_cut_pairs"] == 0
    assert "reference cut in 1" in pairs.summary_text()


def test_reference_data_needs_its_fields():
    with pytest.raises(ConfigError, match="max_response_length"):
        _build(datasets.Dataset.from_list([_reference_record()]), is_reference=True)
    with pytest.raises(DataError, match="'reference'"):
        _build(datasets.Dataset.from_list([_record()]), is_reference=True, max_response_length=8)
    with pytest.raises(DataError, match="'wrapper'"):
        _build(
            datasets.Dataset.from_list([_reference_record(wrapper="chat")]), is_reference=True, max_response_length=8
        )


# --- dataset_map_fn="auto" ---------------------------------------------------------------------


def test_auto_map_fn_finds_the_format_and_says_so():
    hh = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi there\n\nAssistant: Go."}
    pairs = _build(datasets.Dataset.from_list([hh, hh]), dataset_map_fn="auto")
    assert pairs.summary["map_fn"] == "hh_rlhf_map_fn" and len(pairs) == 2


def test_auto_map_fn_refusal_names_the_config_key():
    with pytest.raises(ConfigError, match="dataset_map_fn='NAME'"):
        _build(datasets.Dataset.from_list([{"text": "a", "label": 1}]), dataset_map_fn="auto")


def test_missing_field_hint_names_what_the_user_types_there():
    bad = [{"question": "Hi", "chosen": "a", "rejected": "b"}]
    with pytest.raises(DataError) as info:
        _build(datasets.Dataset.from_list(bad))
    assert "skip_bad_records=True drops such records" in str(info.value)
    assert "map function (dataset_map_fn)" in str(info.value)
    cli = {"skip_bad_records": "--skip-bad-records", "dataset_map_fn": "--map-fn"}
    with pytest.raises(DataError) as info:
        _build(datasets.Dataset.from_list(bad), option_names=cli)
    assert "--skip-bad-records drops such records" in str(info.value) and "(--map-fn)" in str(info.value)

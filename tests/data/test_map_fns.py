"""Tests for rmtrain.data.map_fns: literal records, error cases, the registry, and real data."""

from __future__ import annotations

import copy
import csv
import gzip
import json
from itertools import islice
from pathlib import Path

import pytest

from rmtrain.data import map_fns
from rmtrain.data.map_fns import (
    MAP_FNS,
    ROLES,
    hh_rlhf_map_fn,
    intel_orca_dpo_map_fn,
    messages_preference_map_fn,
    orpo_dpo_mix_40k_map_fn,
    register_map_fn,
    resolve_map_fn,
    sharegpt_preference_map_fn,
    string_preference_map_fn,
)
from rmtrain.errors import RecordFieldError

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


# ----------------------------------------------------------------------------- literal records


def test_orpo_dpo_mix_40k_multi_turn():
    record = {
        "source": "toy",
        "prompt": "And in Spanish?",
        "chosen": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello in French."},
            {"role": "assistant", "content": "Bonjour."},
            {"role": "user", "content": "And in Spanish?"},
            {"role": "assistant", "content": "Hola."},
        ],
        "rejected": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello in French."},
            {"role": "assistant", "content": "Bonjour."},
            {"role": "user", "content": "And in Spanish?"},
            {"role": "assistant", "content": "Ciao."},
        ],
    }
    assert orpo_dpo_mix_40k_map_fn(record) == {
        "prompt": [system("Be brief."), user("Say hello in French."), assistant("Bonjour."), user("And in Spanish?")],
        "chosen": [assistant("Hola.")],
        "rejected": [assistant("Ciao.")],
    }


def test_orpo_dpo_mix_40k_argilla_ultrafeedback_shape_with_margin():
    record = {
        "prompt": "What is 2 + 2?",
        "chosen": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}],
        "chosen-rating": 5.0,
        "rejected": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "5"}],
        "rejected-rating": 1.0,
        "margin": 2,
    }
    assert orpo_dpo_mix_40k_map_fn(record) == {
        "prompt": [user("What is 2 + 2?")],
        "chosen": [assistant("4")],
        "rejected": [assistant("5")],
        "margin": 2.0,
    }
    assert isinstance(orpo_dpo_mix_40k_map_fn(record)["margin"], float)


def test_orpo_dpo_mix_40k_uses_prompt_column_when_lists_hold_only_the_answer():
    record = {"prompt": "Name a colour.", "chosen": [assistant("Blue.")], "rejected": [assistant("Seven.")]}
    assert orpo_dpo_mix_40k_map_fn(record)["prompt"] == [user("Name a colour.")]


def test_intel_orca_dpo_with_and_without_system():
    record = {
        "system": "You are a helpful assistant.",
        "question": "Translate 'cat' to German.",
        "chosen": "Katze",
        "rejected": " Hund",
    }
    assert intel_orca_dpo_map_fn(record) == {
        "prompt": [system("You are a helpful assistant."), user("Translate 'cat' to German.")],
        "chosen": [assistant("Katze")],
        "rejected": [assistant(" Hund")],
    }
    assert intel_orca_dpo_map_fn({**record, "system": ""})["prompt"] == [user("Translate 'cat' to German.")]


def test_hh_rlhf_multi_turn():
    record = {
        "chosen": "\n\nHuman: hi there\n\nAssistant: Hello! How can I help?\n\nHuman: What is the capital of Peru?"
        "\n\nAssistant: The capital of Peru is Lima. ",
        "rejected": "\n\nHuman: hi there\n\nAssistant: Hello! How can I help?\n\nHuman: What is the capital of Peru?"
        "\n\nAssistant:  I don't know.",
    }
    assert hh_rlhf_map_fn(record) == {
        "prompt": [user("hi there"), assistant("Hello! How can I help?"), user("What is the capital of Peru?")],
        "chosen": [assistant("The capital of Peru is Lima.")],
        "rejected": [assistant("I don't know.")],
    }


def test_hh_rlhf_keeps_inner_blank_lines_and_uses_chosen_prompt_when_prefixes_differ():
    record = {
        "chosen": "\n\nHuman: Write two lines.\n\nAssistant: Line one.\n\nLine two.",
        "rejected": "\n\nHuman: Write two lines, please.\n\nAssistant: No.",
    }
    assert hh_rlhf_map_fn(record) == {
        "prompt": [user("Write two lines.")],
        "chosen": [assistant("Line one.\n\nLine two.")],
        "rejected": [assistant("No.")],
    }


def test_hh_rlhf_accepts_transcript_without_leading_blank_line():
    record = {"chosen": "Human: hi\n\nAssistant: hello", "rejected": "Human: hi\n\nAssistant: go away"}
    assert hh_rlhf_map_fn(record)["prompt"] == [user("hi")]


def test_sharegpt_preference_multi_turn_with_system_field():
    record = {
        "conversations": [
            {"from": "human", "value": "Give me a number."},
            {"from": "gpt", "value": "7"},
            {"from": "human", "value": "Another one?"},
        ],
        "chosen": {"from": "gpt", "value": "12"},
        "rejected": {"from": "gpt", "value": "I refuse."},
        "system": "Answer with numbers.",
    }
    assert sharegpt_preference_map_fn(record) == {
        "prompt": [system("Answer with numbers."), user("Give me a number."), assistant("7"), user("Another one?")],
        "chosen": [assistant("12")],
        "rejected": [assistant("I refuse.")],
    }


def test_sharegpt_preference_role_mapping_and_system_turn():
    record = {
        "conversations": [
            {"from": "system", "value": "You can call tools."},
            {"from": "user", "value": "Weather in Oslo?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
            {"from": "observation", "value": '{"temp_c": 3}'},
            {"from": "tool", "value": '{"wind": "calm"}'},
            {"from": "assistant", "value": "It is 3 C and calm."},
            {"from": "human", "value": "Thanks!"},
        ],
        "chosen": {"from": "gpt", "value": "You're welcome."},
        "rejected": {"from": "assistant", "value": "Whatever."},
        "system": "You can call tools.",  # same as the system turn: not duplicated
    }
    out = sharegpt_preference_map_fn(record)
    assert [m["role"] for m in out["prompt"]] == ["system", "user", "assistant", "tool", "tool", "assistant", "user"]
    assert out["prompt"][2] == assistant('{"name": "weather", "arguments": {"city": "Oslo"}}')
    assert out["rejected"] == [assistant("Whatever.")]


def test_string_preference():
    record = {
        "prompt": "Is water wet?",
        "chosen": "Yes, in everyday terms.",
        "rejected": "Purple.",
        "source_index": "3",
    }
    assert string_preference_map_fn(record) == {
        "prompt": [user("Is water wet?")],
        "chosen": [assistant("Yes, in everyday terms.")],
        "rejected": [assistant("Purple.")],
    }
    with_system = string_preference_map_fn({**record, "system": "Be kind.", "margin": 0.5})
    assert with_system["prompt"] == [system("Be kind."), user("Is water wet?")]
    assert with_system["margin"] == 0.5


def test_messages_preference_lists():
    record = {
        "prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2 * 3?"}],
        "chosen": [{"role": "assistant", "content": "6"}],
        "rejected": [{"role": "assistant", "content": "8"}],
        "margin": 1.5,
    }
    assert messages_preference_map_fn(record) == {
        "prompt": [system("Be terse."), user("2 * 3?")],
        "chosen": [assistant("6")],
        "rejected": [assistant("8")],
        "margin": 1.5,
    }


def test_messages_preference_strings_and_multi_turn_response():
    record = {
        "prompt": "What time is it?",
        "chosen": [
            {"role": "assistant", "content": '{"call": "clock"}'},
            {"role": "tool", "content": "12:00"},
            {"role": "assistant", "content": "It is noon."},
        ],
        "rejected": "No idea.",
    }
    assert messages_preference_map_fn(record) == {
        "prompt": [user("What time is it?")],
        "chosen": [assistant('{"call": "clock"}'), {"role": "tool", "content": "12:00"}, assistant("It is noon.")],
        "rejected": [assistant("No idea.")],
    }


def test_messages_preference_allows_empty_prompt_list_and_drops_extra_keys():
    record = {"prompt": [], "chosen": [{"role": "assistant", "content": "A", "name": "bot"}], "rejected": "B"}
    assert messages_preference_map_fn(record) == {
        "prompt": [],
        "chosen": [assistant("A")],
        "rejected": [assistant("B")],
    }


def test_map_fns_are_pure():
    record = {
        "conversations": [{"from": "human", "value": "hi"}],
        "chosen": {"from": "gpt", "value": "hello"},
        "rejected": {"from": "gpt", "value": "bye"},
    }
    before = copy.deepcopy(record)
    out = sharegpt_preference_map_fn(record)
    out["prompt"][0]["content"] = "changed"
    assert record == before
    orpo = {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]}
    out = orpo_dpo_mix_40k_map_fn(orpo)
    assert out["prompt"][0] is not orpo["chosen"][0]


# ----------------------------------------------------------------------------- errors


def turn(speaker, value):
    return {"from": speaker, "value": value}


def without(record, field):
    return {key: value for key, value in record.items() if key != field}


# One valid record per function; each error case below breaks one field of it.
ORPO = {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]}
ORCA = {"system": "", "question": "q", "chosen": "a", "rejected": "b"}
HH = {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}
SHAREGPT = {"conversations": [turn("human", "q")], "chosen": turn("gpt", "a"), "rejected": turn("gpt", "b")}
STRINGS = {"prompt": "q", "chosen": "a", "rejected": "b"}
MESSAGES = {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}


@pytest.mark.parametrize(
    ("fn", "record", "field"),
    [
        # missing fields (None counts as missing: mixed data sets fill absent columns with None)
        (orpo_dpo_mix_40k_map_fn, without(ORPO, "rejected"), "rejected"),
        (intel_orca_dpo_map_fn, without(ORCA, "question"), "question"),
        (hh_rlhf_map_fn, without(HH, "rejected"), "rejected"),
        (sharegpt_preference_map_fn, without(SHAREGPT, "conversations"), "conversations"),
        (string_preference_map_fn, without(STRINGS, "chosen"), "chosen"),
        (string_preference_map_fn, {**STRINGS, "prompt": None}, "prompt"),
        (messages_preference_map_fn, without(MESSAGES, "rejected"), "rejected"),
        # empty responses
        (orpo_dpo_mix_40k_map_fn, {**ORPO, "rejected": [user("q"), assistant("  ")]}, "rejected"),
        (intel_orca_dpo_map_fn, {**ORCA, "chosen": "\n"}, "chosen"),
        (hh_rlhf_map_fn, {**HH, "rejected": "\n\nHuman: q\n\nAssistant: "}, "rejected"),
        (sharegpt_preference_map_fn, {**SHAREGPT, "chosen": turn("gpt", "")}, "chosen"),
        (string_preference_map_fn, {**STRINGS, "rejected": " \t"}, "rejected"),
        (messages_preference_map_fn, {**MESSAGES, "chosen": [assistant("")]}, "chosen"),
        (messages_preference_map_fn, {**MESSAGES, "chosen": []}, "chosen"),
        # wrong types and shapes
        (orpo_dpo_mix_40k_map_fn, {**ORPO, "chosen": "just text"}, "chosen"),
        (orpo_dpo_mix_40k_map_fn, {**ORPO, "chosen": [user("q"), assistant("a"), user("more?")]}, "chosen"),
        (orpo_dpo_mix_40k_map_fn, {**ORPO, "chosen": [{"role": "bot", "content": "q"}, assistant("a")]}, "chosen"),
        (intel_orca_dpo_map_fn, {**ORCA, "system": 3}, "system"),
        (hh_rlhf_map_fn, {**HH, "chosen": "\n\nHuman: q\n\nHuman: a"}, "chosen"),
        (hh_rlhf_map_fn, {**HH, "chosen": "preamble\n\nHuman: q\n\nAssistant: a"}, "chosen"),
        (hh_rlhf_map_fn, {**HH, "chosen": [HH["chosen"]]}, "chosen"),
        (sharegpt_preference_map_fn, {**SHAREGPT, "conversations": [turn("robot", "q")]}, "conversations"),
        (sharegpt_preference_map_fn, {**SHAREGPT, "conversations": turn("human", "q")}, "conversations"),
        (sharegpt_preference_map_fn, {**SHAREGPT, "chosen": turn("human", "a")}, "chosen"),
        (sharegpt_preference_map_fn, {**SHAREGPT, "rejected": [turn("gpt", "b")]}, "rejected"),
        (
            sharegpt_preference_map_fn,
            {**SHAREGPT, "conversations": [turn("system", "S1"), turn("human", "q")], "system": "S2"},
            "system",
        ),
        (string_preference_map_fn, {**STRINGS, "prompt": ["q"]}, "prompt"),
        (messages_preference_map_fn, {**MESSAGES, "prompt": [{"role": "user", "content": None}]}, "prompt"),
        (messages_preference_map_fn, {**MESSAGES, "prompt": [{"role": "human", "content": "q"}]}, "prompt"),
        (messages_preference_map_fn, {**MESSAGES, "prompt": ""}, "prompt"),
        (messages_preference_map_fn, {**MESSAGES, "chosen": ["a"]}, "chosen"),
        (messages_preference_map_fn, {**MESSAGES, "rejected": 5}, "rejected"),
        # bad margin
        (string_preference_map_fn, {**STRINGS, "margin": "1.0"}, "margin"),
        (string_preference_map_fn, {**STRINGS, "margin": True}, "margin"),
        (string_preference_map_fn, {**STRINGS, "margin": float("nan")}, "margin"),
    ],
)
def test_unusable_record_names_the_field(fn, record, field):
    with pytest.raises(RecordFieldError) as info:
        fn(record)
    assert info.value.field == field
    assert f"field '{field}'" in str(info.value)


# ----------------------------------------------------------------------------- registry


def test_every_function_is_registered_under_its_own_name():
    assert set(MAP_FNS) == {
        "orpo_dpo_mix_40k_map_fn",
        "intel_orca_dpo_map_fn",
        "hh_rlhf_map_fn",
        "sharegpt_preference_map_fn",
        "string_preference_map_fn",
        "messages_preference_map_fn",
        "reference_preference_map_fn",
    }
    for name, fn in MAP_FNS.items():
        assert fn.__name__ == name
        assert getattr(map_fns, name) is fn


def test_resolve_map_fn_accepts_none_callables_names_and_dotted_paths():
    assert resolve_map_fn(None) is None
    assert resolve_map_fn(len) is len
    assert resolve_map_fn("hh_rlhf_map_fn") is hh_rlhf_map_fn
    assert resolve_map_fn("rmtrain.data.map_fns.string_preference_map_fn") is string_preference_map_fn
    assert resolve_map_fn("json.loads") is json.loads


def test_resolve_map_fn_typo_suggests_the_registered_name():
    with pytest.raises(ValueError) as info:
        resolve_map_fn("orpo_dpo_mix_40k")
    message = str(info.value)
    assert "orpo_dpo_mix_40k_map_fn" in message
    assert "Did you mean" in message
    assert all(name in message for name in MAP_FNS)


@pytest.mark.parametrize(
    "bad", ["no_such_module_xyz.fn", "rmtrain.data.map_fns.nope", "rmtrain.data.map_fns.ROLES", ".fn", "..fn", 42]
)
def test_resolve_map_fn_rejects_unusable_values(bad):
    with pytest.raises(ValueError, match="Registered map functions"):
        resolve_map_fn(bad)


def test_register_map_fn_refuses_a_second_function_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register_map_fn("hh_rlhf_map_fn")(lambda record: record)
    assert MAP_FNS["hh_rlhf_map_fn"] is hh_rlhf_map_fn


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip("../shared/data not present (CI and dev machines have it)")
    return DATA_DIR


def read_jsonl_gz(path: Path, limit: int | None = None) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in islice(f, limit)]


def assert_well_formed(out: dict, *, prompt_ends_with_user: bool = True) -> None:
    assert set(out) == {"prompt", "chosen", "rejected"}
    for key in ("prompt", "chosen", "rejected"):
        for msg in out[key]:
            assert set(msg) == {"role", "content"}
            assert msg["role"] in ROLES
            assert isinstance(msg["content"], str)
    for key in ("chosen", "rejected"):
        assert out[key][-1]["role"] == "assistant"
        assert out[key][-1]["content"].strip()
    if prompt_ends_with_user:
        assert out["prompt"] and out["prompt"][-1]["role"] == "user"
        assert out["prompt"][-1]["content"].strip()


@pytest.mark.slow
def test_real_hh_rlhf_first_records(data_dir):
    records = read_jsonl_gz(data_dir / "hh-rlhf/helpful-base/test.jsonl.gz", 50)
    for record in records:
        assert_well_formed(hh_rlhf_map_fn(record))
    first = hh_rlhf_map_fn(records[0])
    assert first["prompt"] == [user("Do you know why turkeys became the official food of thanksgiving?")]
    assert first["chosen"][0]["content"].startswith("To be honest, I don’t know anything about that.")


# The real test files hold a few records whose response after the last "\n\nAssistant:" is empty.
# They must fail loudly on that field rather than map to an empty response.
@pytest.mark.parametrize(
    ("path", "empty"),
    [
        ("hh-rlhf/helpful-base/test.jsonl.gz", {120: "rejected", 740: "rejected", 1214: "rejected", 2063: "rejected"}),
        ("hh-rlhf/harmless-base/test.jsonl.gz", {86: "chosen", 516: "chosen", 925: "chosen", 1103: "chosen"}),
    ],
)
@pytest.mark.slow
def test_real_hh_rlhf_all_records(data_dir, path, empty):
    records = read_jsonl_gz(data_dir / path)
    failed = {}
    for i, record in enumerate(records):
        try:
            out = hh_rlhf_map_fn(record)
        except RecordFieldError as exc:
            failed[i] = exc.field
            assert "is empty" in exc.message
            continue
        # A few real transcripts repeat the assistant marker, so the prompt may end with an assistant turn.
        assert_well_formed(out, prompt_ends_with_user=False)
        assert out["prompt"][0]["role"] == "user"
    assert failed == empty
    assert len(records) - len(failed) > 2300


@pytest.mark.slow
def test_real_ultrafeedback_strings_first_records(data_dir):
    records = read_jsonl_gz(data_dir / "ultrafeedback-binarized-sample/train_clean.jsonl.gz", 50)
    assert len(records) == 50
    for record in records:
        out = string_preference_map_fn(record)
        assert_well_formed(out)
        assert out["prompt"] == [user(record["prompt"])]
        assert out["chosen"] == [assistant(record["chosen"])]


@pytest.mark.slow
def test_real_llamafactory_sharegpt_first_records(data_dir):
    with gzip.open(data_dir / "llamafactory-demo/dpo_en_demo.json.gz", "rt", encoding="utf-8") as f:
        records = json.load(f)[:50]
    assert len(records) == 50
    for record in records:
        out = sharegpt_preference_map_fn(record)
        assert_well_formed(out)
        assert len(out["prompt"]) == len(record["conversations"])
        assert out["chosen"] == [assistant(record["chosen"]["value"])]


@pytest.mark.slow
def test_real_orca_dpo_pairs_first_records(data_dir):
    with open(data_dir / "misc-small/orca_dpo_pairs_demo.csv", newline="", encoding="utf-8") as f:
        records = list(islice(csv.DictReader(f), 50))
    assert len(records) == 50
    for record in records:
        out = intel_orca_dpo_map_fn(record)
        assert_well_formed(out)
        assert out["prompt"][0]["role"] == ("system" if record["system"].strip() else "user")
        assert out["prompt"][-1] == user(record["question"])


# --- format detection --------------------------------------------------------------------------

import datasets  # noqa: E402

from rmtrain.data.map_fns import detect_record_format  # noqa: E402
from rmtrain.errors import ConfigError  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
_M = [{"role": "user", "content": "Hi"}]
_A = [{"role": "assistant", "content": "Hello"}]


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"prompt": _M, "chosen": _A, "rejected": _A}, "messages_preference_map_fn"),
        ({"prompt": "Hi", "chosen": _A, "rejected": _A}, "messages_preference_map_fn"),
        ({"prompt": "Hi", "chosen": _M + _A, "rejected": _M + _A}, "orpo_dpo_mix_40k_map_fn"),
        ({"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}, "string_preference_map_fn"),
        ({"system": "", "question": "Hi", "chosen": "Hello", "rejected": "Go"}, "intel_orca_dpo_map_fn"),
        ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Go"}, "hh_rlhf_map_fn"),
        (
            {"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "a"},
             "rejected": {"from": "gpt", "value": "b"}},
            "sharegpt_preference_map_fn",
        ),
    ],
)  # fmt: skip
def test_detect_record_format_on_built_records(record, expected):
    name, shape = detect_record_format([record, record], "f.jsonl")
    assert name == expected and shape
    assert MAP_FNS[name](record)["chosen"][-1]["role"] == "assistant"  # the chosen function reads it


def test_detect_record_format_refusal_lists_fields_and_closest_and_the_option():
    record = {"question_text": "Hi", "answer_good": "a", "answer_bad": "b", "prompt": "Hi"}
    with pytest.raises(ConfigError) as info:
        detect_record_format([record], "mine.jsonl", option="--map-fn")
    message = str(info.value)
    assert "mine.jsonl" in message and "question_text (str)" in message and "answer_bad (str)" in message
    assert "string_preference_map_fn" in message and "missing chosen, rejected" in message
    assert "--map-fn NAME" in message
    with pytest.raises(ConfigError, match="dataset_map_fn='NAME'"):
        detect_record_format([record], "mine.jsonl")


def _first_records(path: Path, count: int = 8) -> list[dict]:
    if path.suffix == ".csv":
        return datasets.load_dataset("csv", data_files=str(path), split="train").select(range(count)).to_list()
    with gzip.open(path, "rt") as handle:
        if path.name.endswith(".json.gz"):
            return json.load(handle)[:count]
        return [json.loads(line) for _, line in zip(range(count), handle)]


@pytest.mark.slow  # reads ../shared/data
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the real data folder {SHARED_DATA} is not here")
@pytest.mark.parametrize(
    "relative, expected",
    [
        ("hh-rlhf/helpful-base/test.jsonl.gz", "hh_rlhf_map_fn"),
        ("hh-rlhf/harmless-base/test.jsonl.gz", "hh_rlhf_map_fn"),
        ("ultrafeedback-binarized-sample/train_clean.jsonl.gz", "string_preference_map_fn"),
        ("llamafactory-demo/dpo_en_demo.json.gz", "sharegpt_preference_map_fn"),
        ("misc-small/orca_dpo_pairs_demo.csv", "intel_orca_dpo_map_fn"),
    ],
)
def test_detect_record_format_on_real_samples(relative, expected):
    records = _first_records(SHARED_DATA / relative)
    name, _shape = detect_record_format(records, relative)
    assert name == expected
    for record in records:  # and the function it chose reads every one of them
        out = MAP_FNS[name](record)
        assert out["prompt"] and out["chosen"][-1]["role"] == "assistant"


@pytest.mark.slow  # reads ../shared/data
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the real data folder {SHARED_DATA} is not here")
def test_detect_record_format_refuses_arena_votes():
    # Chatbot Arena rows: two responses and a winner flag, no chosen/rejected: not a preference format here.
    records = _first_records(SHARED_DATA / "misc-small/lmsys_arena_train_demo.csv")
    with pytest.raises(ConfigError) as info:
        detect_record_format(records, "lmsys_arena_train_demo.csv", option="--map-fn")
    message = str(info.value)
    assert "response_a (str)" in message and "winner_model_a (int)" in message
    assert "string_preference_map_fn (reads prompt, chosen, rejected; missing chosen, rejected)" in message

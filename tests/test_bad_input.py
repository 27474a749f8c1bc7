"""Bad input ends with rc 2 and one line naming the file (and record and field), never a traceback.

Each case runs the verb in this process (`rmtrain.cli.main`, the code the command line runs) on the
tiny demo config with one thing broken; data problems are found before any model is built, and the
work dir holds no checkpoint afterwards.
"""

import gzip
import json
import random
from pathlib import Path

import pytest
import torch

from recipe_variants import recipe_variant
from rmtrain.cli import main
from rmtrain.data.loading import load_jsonl_dataset, load_records
from rmtrain.errors import DataError

TINY_MODEL = [
    ("hidden_size=128", "hidden_size=32"),
    ("intermediate_size=256", "intermediate_size=64"),
    ("num_hidden_layers=4", "num_hidden_layers=2"),
]
DEMO_DATA = (
    "demo_data = dict(type=build_demo_preference_data, num_pairs=round(num_pairs / (1 - val_split)), seed=data_seed)"
)
GOOD = [{"prompt": f"Question {i}?", "chosen": f"A good answer {i}.", "rejected": f"No {i}."} for i in range(30)]


def _jsonl(records) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def _config(tmp_path: Path, data: Path | None = None, replacements=()) -> Path:
    replacements = list(TINY_MODEL) + list(replacements)
    if data is not None:
        replacements.append(
            (DEMO_DATA, f"demo_data = dict(type='rmtrain.data.load_jsonl_dataset', data_files={str(data)!r})")
        )
    return recipe_variant(tmp_path, "config", replacements=replacements, num_pairs=24, max_epochs=1)


def _fails_clearly(capsys, argv: list[str], *named: str) -> str:
    """Runs `rmtrain ARGV`; asserts rc 2 and one error line that contains every string of `named`.

    rc 2 is main's answer to an RmtrainError only; any other exception would propagate and fail the test.
    """
    assert main([str(arg) for arg in argv]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("rmtrain: error:")]
    for text in named:
        assert text in line, (text, line)
    return line


def _train(tmp_path, config, *args) -> list:
    return ["train", config, "--work-dir", tmp_path / "work", *args]


def _no_checkpoint(tmp_path) -> None:
    assert not list((tmp_path / "work").glob("iter_*")), "a checkpoint was written"


def _bad_utf8(path: Path) -> None:
    path.write_bytes(_jsonl(GOOD[:3]).encode() + b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}\n')


def _truncated_gz(path: Path) -> None:
    compressed = gzip.compress(_jsonl(GOOD * 40).encode())
    path.write_bytes(compressed[: len(compressed) // 2])


@pytest.mark.parametrize(
    "name, write, named",
    [
        ("blank.jsonl", lambda path: path.write_text("\n\n\n"), ["record 0", "empty"]),
        ("list.jsonl", lambda path: path.write_text("[]\n"), ["record 0", "empty"]),
        ("utf8.jsonl", _bad_utf8, ["record 3", "UTF-8"]),
        ("pairs.jsonl.gz", _truncated_gz, ["truncated or corrupt"]),
        ("json.jsonl", lambda path: path.write_text(_jsonl(GOOD[:5]) + '{"prompt": "x", "chosen": \n'), ["record 5"]),
    ],
    ids=["blank lines", "empty list", "invalid UTF-8", "truncated gz", "bad JSON"],
)
def test_unreadable_training_data_names_the_file_and_record(tmp_path, capsys, name, write, named):
    data = tmp_path / name
    write(data)
    _fails_clearly(capsys, _train(tmp_path, _config(tmp_path, data)), str(data), *named)
    _no_checkpoint(tmp_path)


def test_a_json_error_deep_in_a_large_file_reports_the_true_record(tmp_path):
    # Several Arrow blocks: the reader's own position restarts in each, the record index must not.
    records = [{"prompt": "p" * 300 + str(i), "chosen": "c" * 100, "rejected": "r" * 100} for i in range(40000)]
    lines = _jsonl(records).splitlines()
    lines[31234] = '{"prompt": "broken", "chosen": '
    path = tmp_path / "large.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as error:
        load_records(dict(type=load_jsonl_dataset, data_files=str(path)))
    assert error.value.source == str(path) and error.value.index == 31234


@pytest.mark.parametrize("map_fn", ["len", "'os.path.join'"], ids=["returns no record", "raises TypeError"])
def test_a_map_function_that_is_not_one_is_an_error(tmp_path, capsys, map_fn):
    data = tmp_path / "pairs.jsonl"
    data.write_text(_jsonl(GOOD))
    config = _config(tmp_path, data, [("dataset_map_fn=None,", f"dataset_map_fn={map_fn},")])
    _fails_clearly(capsys, _train(tmp_path, config), str(data), "record 0", "map function")
    _no_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "option, named",
    [("optim_wrapper.optimizer.lr=abc", "expected a number"), ("train_cfg.max_epochs=many", "expected a number")],
)
def test_cfg_options_of_the_wrong_type_are_an_error(tmp_path, capsys, option, named):
    _fails_clearly(capsys, _train(tmp_path, _config(tmp_path), "--cfg-options", option), option.split("=")[0], named)


def test_a_model_vocabulary_smaller_than_the_tokenizers_is_an_error_before_training(tmp_path, capsys):
    config = _config(tmp_path, replacements=[("vocab_size=1024", "vocab_size=16")])
    _fails_clearly(capsys, _train(tmp_path, config), "vocabulary has only 16 entries")
    _no_checkpoint(tmp_path)


def test_a_work_dir_that_cannot_be_written_is_an_error(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    _fails_clearly(capsys, ["train", _config(tmp_path), "--work-dir", blocker / "work"], str(blocker / "work"))


@pytest.mark.parametrize("content", ["empty", "random"])
def test_a_broken_checkpoint_given_to_resume_or_eval_is_named(tmp_path, capsys, content):
    path = tmp_path / "iter_4.pth"
    path.write_bytes(b"" if content == "empty" else random.Random(1).randbytes(2048))
    config = _config(tmp_path)
    _fails_clearly(capsys, _train(tmp_path, config, "--resume", path), str(path), "not a readable checkpoint")
    data = tmp_path / "pairs.jsonl"
    data.write_text(_jsonl(GOOD[:2]))
    _fails_clearly(capsys, ["eval", path, data, "--config", config], str(path), "not a readable checkpoint")


def test_a_checkpoint_of_another_config_given_to_resume_is_named(tmp_path, capsys):
    path = tmp_path / "iter_4.pth"
    other = {"v_head.weight": torch.zeros(1, 64), "model.embed_tokens.weight": torch.zeros(10, 64)}
    torch.save({"meta": {"epoch": 0, "iter": 4, "seed": 0}, "state_dict": other, "message_hub": {}}, path)
    line = _fails_clearly(capsys, _train(tmp_path, _config(tmp_path), "--resume", path), str(path), "does not fit")
    assert "v_head.weight" in line

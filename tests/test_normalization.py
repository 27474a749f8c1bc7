"""Normalisation statistics: measured as OpenRLHF measures them, round-tripped through config.json.

`rmtrain convert` measures them on the config's validation split; `rmtrain eval --write-stats`
on a data file; `rmtrain eval --normalize` applies them.
"""

import json

import pytest
import torch

from recipe_variants import recipe_variant
from rmtrain import cli
from rmtrain.builder import build
from rmtrain.config import load_config
from rmtrain.data import build_demo_preference_data
from rmtrain.errors import ConfigError, EvaluationError
from rmtrain.evaluation import evaluate_reward_model
from rmtrain.normalization import (
    MIN_STD,
    README_LINE_START,
    ScoreNormalization,
    measure_normalization,
    read_normalization,
    write_normalization,
)
from rmtrain.scoring import score_batch

TINY_MODEL = [
    ("hidden_size=128", "hidden_size=32"),
    ("intermediate_size=256", "intermediate_size=64"),
    ("num_hidden_layers=4", "num_hidden_layers=2"),
]


def test_measure_matches_torch_std_as_openrlhf_uses_it():
    scores = [0.5, -1.25, 2.0, 0.75, 3.5]
    stats = measure_normalization(scores)
    values = torch.tensor(scores, dtype=torch.float64)
    assert stats.mean == pytest.approx(values.mean().item()) and stats.std == pytest.approx(values.std().item())
    assert stats.apply([stats.mean, stats.mean + stats.std]) == pytest.approx([0.0, 1.0])
    assert measure_normalization([1.0, 1.0]).std == MIN_STD
    with pytest.raises(EvaluationError, match="at least 2 scores"):
        measure_normalization([1.0])


def test_write_and_read_through_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_labels": 1}))
    (tmp_path / "README.md").write_text("# Reward model\n\nSome text.\n")
    assert read_normalization(str(tmp_path)) is None
    write_normalization(str(tmp_path), ScoreNormalization(0.25, 2.0), "first data")
    write_normalization(str(tmp_path), ScoreNormalization(-0.5, 1.5), "second data")  # replaces, never piles up
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["mean"], config["std"], config["normalize_reward"]) == (-0.5, 1.5, False)
    assert config["model_type"] == "llama"
    assert read_normalization(str(tmp_path)) == ScoreNormalization(-0.5, 1.5)
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("# Reward model\n\nSome text.\n")
    assert readme.count(README_LINE_START) == 1 and "second data" in readme


@pytest.mark.parametrize("values", [{"mean": "0"}, {"mean": 0.0, "std": 0.0}, {"mean": 0.0}, {"std": 1.0}])
def test_unusable_statistics_are_named(tmp_path, values):
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(EvaluationError, match="config.json: '(mean|std)'"):
        read_normalization(str(tmp_path))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A converted tiny model (random value head) whose config has a validation split; and 20 pairs."""
    from rmtrain.convert import convert_pth_to_hf

    folder = tmp_path_factory.mktemp("normalization")
    config = recipe_variant(folder, "tiny", replacements=TINY_MODEL, num_pairs=90)
    torch.manual_seed(0)
    model = build(load_config(str(config)).model)
    torch.nn.init.normal_(model.v_head.weight, std=1.0)
    checkpoint = folder / "iter_1.pth"
    torch.save({"meta": {"iter": 1}, "state_dict": model.state_dict()}, checkpoint)
    convert_pth_to_hf(str(config), str(checkpoint), str(folder / "hf"), fp32=True)
    data = folder / "pairs.jsonl"
    build_demo_preference_data(num_pairs=20, seed=11).to_json(str(data))
    return {"config": config, "model": model.eval(), "folder": folder / "hf", "data": data}


def test_convert_measures_the_validation_split_with_the_export(exported):
    cfg = load_config(str(exported["config"]))
    val = build(cfg.val_dataloader.dataset)
    sequences = list(val.pairs["chosen_ids"]) + list(val.pairs["rejected_ids"])
    model = exported["model"]
    scores = score_batch(model.model, model.v_head, sequences, 0, torch.device("cpu"))
    stats = read_normalization(str(exported["folder"]))
    assert stats.mean == pytest.approx(measure_normalization(scores).mean, abs=1e-6)
    assert stats.std == pytest.approx(measure_normalization(scores).std, abs=1e-6)
    assert (
        f"the {len(val)} pairs of the training config's validation split"
        in (exported["folder"] / "README.md").read_text()
    )


def test_eval_write_stats_then_normalize_round_trip(exported, tmp_path, capsys):
    folder, data = str(exported["folder"]), str(exported["data"])
    raw = evaluate_reward_model(folder, data, out=str(tmp_path / "raw.jsonl"))
    assert cli.main(["eval", folder, data, "--write-stats"]) == 0
    assert "stats     mean" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "raw.jsonl").read_text().splitlines()]
    scores = [row["chosen_score"] for row in rows] + [row["rejected_score"] for row in rows]
    stats = read_normalization(folder)
    assert stats == measure_normalization(scores)
    assert "measured on the 20 pairs of" in (exported["folder"] / "README.md").read_text()

    normalized = evaluate_reward_model(folder, data, normalize=True, out=str(tmp_path / "norm.jsonl"))
    norm_rows = [json.loads(line) for line in (tmp_path / "norm.jsonl").read_text().splitlines()]
    assert [row["chosen_score"] for row in norm_rows] == pytest.approx(
        stats.apply([row["chosen_score"] for row in rows]), abs=1e-9
    )
    assert normalized["scores"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert normalized["accuracy"] == raw["accuracy"] and normalized["normalization"] == stats.as_dict()


def test_normalize_without_statistics_or_on_a_checkpoint_is_refused(exported, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in exported["folder"].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    del config["mean"], config["std"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(EvaluationError, match="--write-stats"):
        evaluate_reward_model(str(folder), str(exported["data"]), normalize=True)
    with pytest.raises(ConfigError, match="training checkpoint"):
        evaluate_reward_model(
            str(exported["folder"].parent / "iter_1.pth"), str(exported["data"]), config=str(exported["config"]),
            write_stats=True,
        )  # fmt: skip

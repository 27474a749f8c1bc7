"""Integration on real preference data (../shared/data): train the tiny recipe for an epoch on one file,
export it, and evaluate it on others with `rmtrain eval`."""

import json
from pathlib import Path

import pytest

from cli_runner import run_rmtrain
from recipe_variants import recipe_variant

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ULTRAFEEDBACK_EVAL = DATA / "ultrafeedback-binarized-sample" / "eval_clean.jsonl.gz"
HH_HELPFUL = DATA / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
LLAMAFACTORY = DATA / "llamafactory-demo" / "dpo_en_demo.json.gz"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not ULTRAFEEDBACK_EVAL.is_file(),
        reason=f"the real data folder {DATA} is not here (CI and the dev machine have it)",
    ),
]


def rmtrain(*args, cwd, check=True):
    return run_rmtrain(*args, cwd=cwd, pythonpath=Path(__file__).parent, check=check)


@pytest.fixture(scope="module")
def trained_on_ultrafeedback(tmp_path_factory):
    """The tiny recipe trained for one epoch on the UltraFeedback sample's eval file, exported."""
    folder = tmp_path_factory.mktemp("real")
    config = recipe_variant(
        folder, "tiny_ultrafeedback", max_length=256, max_epochs=1, save_steps=1000, log_interval=1,
        replacements=[
            ("demo_data = dict(type=build_demo_preference_data, num_pairs=round(num_pairs / (1 - val_split)), seed=data_seed)",
             f"demo_data = dict(type=load_jsonl_dataset, data_files={str(ULTRAFEEDBACK_EVAL)!r})"),
            ("dataset_map_fn=None,  # generated records are already prompt/chosen/rejected messages",
             "dataset_map_fn='string_preference_map_fn',"),
            ("from rmtrain.data import (", "from rmtrain.data import (\n    load_jsonl_dataset,"),
        ],
    )  # fmt: skip
    work_dir = folder / "work"
    rmtrain("train", str(config), "--work-dir", str(work_dir), cwd=folder)
    checkpoint = Path((work_dir / "last_checkpoint").read_text().strip())
    rmtrain("convert", "pth_to_hf", str(config), str(checkpoint), str(folder / "hf"), "--fp32", cwd=folder)
    return folder, work_dir


def test_an_epoch_on_real_data_validates_on_its_held_out_tenth(trained_on_ultrafeedback):
    _, work_dir = trained_on_ultrafeedback
    (scalars,) = work_dir.glob("*/vis_data/scalars.json")
    lines = [json.loads(line) for line in scalars.read_text().splitlines()]
    train = [line for line in lines if "loss" in line]
    val = [line for line in lines if "val/accuracy" in line]
    # 200 records, a tenth held out: 180 pairs, rounded up to 12 whole batches of 16 (as DefaultSampler does).
    assert sum(line["num_samples"] for line in train) == 192
    assert val and val[-1]["val/pairs"] == 20
    assert 0.0 <= val[-1]["val/accuracy"] <= 1.0
    assert list(work_dir.glob("best_val_accuracy_iter_*.pth"))


def test_eval_on_hh_rlhf_reports_every_readable_pair(trained_on_ultrafeedback):
    folder, _ = trained_on_ultrafeedback
    out = folder / "hh_scores.jsonl"
    result = rmtrain(
        "eval", str(folder / "hf"), str(HH_HELPFUL), "--skip-bad-records",  # the format is found, not named
        "--batch-size", "16", "--max-length", "128", "--out", str(out), cwd=folder,
    )  # fmt: skip
    summary = json.loads(out.with_name("hh_scores.summary.json").read_text())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # helpful-base test has 2354 records; 4 have an empty rejected response and 2 a chosen side identical to the
    # rejected one (no preference): all 6 are dropped, counted.
    assert summary["map_fn"] == "hh_rlhf_map_fn" and "read with hh_rlhf_map_fn" in result.stdout
    assert "the records look like HH-RLHF transcripts" in result.stdout + result.stderr
    assert summary["pairs"] == len(rows) == 2348
    assert summary["dropped_records"] == 6
    assert summary["correct"] == sum(row["correct"] for row in rows)
    assert len({round(row["chosen_score"], 6) for row in rows}) > 100  # real, varied scores
    assert "accuracy" in result.stdout


def test_eval_on_hh_rlhf_without_skip_names_the_cli_flag(trained_on_ultrafeedback):
    folder, _ = trained_on_ultrafeedback
    result = rmtrain("eval", str(folder / "hf"), str(HH_HELPFUL), "--max-length", "128", cwd=folder, check=False)
    assert result.returncode == 2
    # the first of the 4 records with an empty rejected response, named; the hint is the flag, not a config key
    assert "field 'rejected'" in result.stderr and "--skip-bad-records drops such records" in result.stderr
    assert "skip_bad_records=True" not in result.stderr


def test_eval_reads_the_sharegpt_preference_format(trained_on_ultrafeedback):
    folder, _ = trained_on_ultrafeedback
    result = rmtrain(
        "eval", str(folder / "hf"), str(LLAMAFACTORY), "--map-fn", "sharegpt_preference_map_fn", cwd=folder
    )
    assert "300 pairs" in result.stdout

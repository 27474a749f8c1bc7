"""Validation during training: val metrics in the logs and scalars, the best checkpoint, resume, config checks."""

import json
from pathlib import Path

import pytest
import torch
from mmengine.logging import MessageHub

from cli_runner import run_rmtrain
from recipe_variants import recipe_variant
from rmtrain import cli
from rmtrain.config import load_config
from rmtrain.engine.log_processor import RewardLogProcessor
from rmtrain.engine.train import _align_checkpoints_to_accumulation
from rmtrain.engine.validation import check_validation_config
from rmtrain.errors import ConfigError

# 32 training pairs (36 generated, 4 held out) in batches of 4: 8 iterations, validated every 2.
SMALL = dict(
    num_pairs=32,
    batch_size=4,
    max_epochs=1,
    save_steps=2,
    save_total_limit=1,
    log_interval=1,
    mixed_precision="float32",
)
TINY_MODEL = [
    ("hidden_size=128", "hidden_size=32"),
    ("intermediate_size=256", "intermediate_size=64"),
    ("num_hidden_layers=4", "num_hidden_layers=2"),
]
VAL_KEYS = {
    "val/pairs",
    "val/accuracy",
    "val/margin_mean",
    "val/chosen_score_mean",
    "val/rejected_score_mean",
    "val/score_std",
}


def small_config(folder: Path, name: str, extra: str = "", **settings) -> Path:
    return recipe_variant(folder, name, replacements=TINY_MODEL, extra=extra, **{**SMALL, **settings})


def run_train(config: Path, work_dir: Path, *args, check=True):
    return run_rmtrain(
        "train", config, "--work-dir", work_dir, *args, cwd=config.parent, pythonpath=Path(__file__).parent, check=check
    )


def scalar_lines(work_dir: Path) -> list[dict]:
    lines = []
    for scalars in sorted(work_dir.glob("*/vis_data/scalars.json")):
        lines += [json.loads(line) for line in scalars.read_text().splitlines()]
    return lines


# Two best-checkpoint indicators: val/pairs never improves after the first validation, so its best
# checkpoint is iter 2, which max_keep_ckpts=1 removes from the regular checkpoints long before the end.
TWO_BEST = '\ndefault_hooks["checkpoint"]["save_best"] = ["val/accuracy", "val/pairs"]\n'


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory):
    """(config, work dir, finished process) of one uninterrupted small run with validation."""
    folder = tmp_path_factory.mktemp("validated")
    config = small_config(folder, "val", extra=TWO_BEST)
    return config, folder / "work", run_train(config, folder / "work")


def best_files(work_dir: Path) -> list[str]:
    return sorted(p.name for p in work_dir.glob("best_*.pth"))


@pytest.mark.slow
def test_validation_logs_metrics_and_keeps_the_best_checkpoint(validated_run):
    _, work, result = validated_run
    val_lines = [line for line in scalar_lines(work) if "val/accuracy" in line]
    assert [line["step"] for line in val_lines] == [2, 4, 6, 8]
    for line in val_lines:
        assert VAL_KEYS <= set(line)
        assert line["val/pairs"] == 4
        assert line["val/accuracy"] * 4 == pytest.approx(round(line["val/accuracy"] * 4))
    assert "Iter(val)" in result.stdout + result.stderr
    assert "preference data from the config's dataset (val part: 4 of 36 records" in result.stdout  # once
    assert result.stdout.count("(val part: 4 of 36 records") == 1
    (log,) = work.glob("*/*.log")
    assert "validation: preference data from the config's dataset (val part: 4 of 36 records" in log.read_text()

    best_step = max(val_lines, key=lambda line: line["val/accuracy"])["step"]  # the first of equal bests
    assert sorted(p.name for p in work.glob("iter_*.pth")) == ["iter_8.pth"]
    assert best_files(work) == sorted([f"best_val_accuracy_iter_{best_step}.pth", "best_val_pairs_iter_2.pth"])
    best = torch.load(work / "best_val_pairs_iter_2.pth", map_location="cpu", weights_only=False)
    assert best["meta"]["iter"] == 2 and "v_head.weight" in best["state_dict"]


@pytest.mark.slow
def test_resume_with_validation_matches_an_uninterrupted_run(validated_run, tmp_path):
    config, uninterrupted, _ = validated_run
    crash = small_config(
        tmp_path,
        "crash",
        extra=TWO_BEST
        + "\nfrom train_stop_hook import StopAtIterHook\ncustom_hooks = [dict(type=StopAtIterHook, stop_at=5)]\n",
    )
    work = tmp_path / "work"
    assert run_train(crash, work, check=False).returncode == 17
    assert (work / "last_checkpoint").read_text().strip().endswith("iter_4.pth")
    run_train(config, work, "--resume", "auto")

    a = torch.load(uninterrupted / "iter_8.pth", map_location="cpu", weights_only=False)["state_dict"]
    b = torch.load(work / "iter_8.pth", map_location="cpu", weights_only=False)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The resumed run knows the best checkpoints saved before the crash: none is orphaned or lost.
    assert best_files(work) == best_files(uninterrupted)

    def val(folder):
        return {line["step"]: line["val/accuracy"] for line in scalar_lines(folder) if "val/accuracy" in line}

    assert val(work) == val(uninterrupted)


@pytest.mark.slow
def test_a_config_without_validation_trains_as_before(tmp_path):
    extra = (
        "\nval_dataloader = val_evaluator = val_cfg = None"
        '\ndefault_hooks["checkpoint"] = dict(type=CheckpointHook, by_epoch=False, interval=save_steps, '
        "max_keep_ckpts=save_total_limit)"
        "\ntrain_dataset.update(val_split=0, dataset=dict(demo_data, num_pairs=num_pairs))\n"
    )
    result = run_train(small_config(tmp_path, "no_val", extra=extra), tmp_path / "work")
    work = tmp_path / "work"
    assert not [line for line in scalar_lines(work) if any(key.startswith("val") for key in line)]
    assert "Iter(val)" not in result.stdout + result.stderr
    assert sorted(p.name for p in work.glob("*.pth")) == ["iter_8.pth"]
    assert "preference data from the config's dataset: 32 pairs" in result.stdout


# ---- checks before training ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        ("\nval_cfg = None\n", "validation needs all of val_dataloader, val_evaluator, val_cfg"),
        ("\nval_dataloader = val_evaluator = val_cfg = None\n", "save_best='val/accuracy' needs validation"),
        ('\ndefault_hooks["checkpoint"]["save_best"] = "accuracy"\n', "'accuracy' is not a validation metric"),
        ("\ntrain_dataset.update(val_split=0)\n", "not the two parts of one split"),
        ("\nval_dataset.update(split_seed=1)\n", "not the two parts of one split"),
    ],
)
def test_validation_settings_are_checked_before_anything_is_built(tmp_path, extra, message):
    config = small_config(tmp_path, "bad", extra=extra)
    with pytest.raises(ConfigError, match=message):
        check_validation_config(load_config(str(config)))


def test_shipped_demo_validates():
    cfg = load_config("tiny_llama_reward_full_demo")
    assert check_validation_config(cfg)
    assert cfg.default_hooks.checkpoint.save_best == "val/accuracy"
    assert cfg.train_cfg.val_interval == cfg.default_hooks.checkpoint.interval


def test_bad_validation_records_fail_before_training(tmp_path, capsys):
    good = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}
    data = tmp_path / "val.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [good, good, {"prompt": "Say yes", "chosen": "Yes!"}]) + "\n")
    extra = (
        "\nval_dataloader['dataset'] = dict(train_dataset, val_split=0, split='train', "
        f"dataset=dict(type='rmtrain.data.load_jsonl_dataset', data_files={str(data)!r}))\n"
    )
    config = small_config(tmp_path, "bad_val", extra=extra)
    code = cli.main(["train", str(config), "--work-dir", str(tmp_path / "work")])
    assert code == 2
    assert f"{data}, record 2, field 'rejected'" in capsys.readouterr().err
    assert not list((tmp_path / "work").glob("*.pth"))


def test_val_interval_follows_accumulation_windows_when_a_best_checkpoint_is_saved(tmp_path):
    cfg = load_config(str(small_config(tmp_path, "acc", accumulative_counts=2, save_steps=4)))
    cfg.train_cfg.val_interval = 3
    messages = []
    _align_checkpoints_to_accumulation(cfg, messages.append, deepspeed=True)
    assert cfg.train_cfg.val_interval == 4 and "validating every 4 iterations" in messages[0]


def test_logged_validation_metrics_are_the_latest_not_a_window_mean():
    class Runner:
        message_hub = MessageHub.get_instance("test_validation_window")

    for value in (0.5, 1.0):
        Runner.message_hub.update_scalar("val/val/accuracy", value)
        Runner.message_hub.update_scalar("train/acc", value)
    processor = RewardLogProcessor(window_size=10)
    assert processor._collect_scalars([], Runner, "val")["val/accuracy"] == 1.0
    assert processor._collect_scalars([], Runner, "train")["acc"] == 0.75  # training keeps its window mean

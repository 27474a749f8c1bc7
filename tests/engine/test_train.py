"""End-to-end training through the `rmtrain` command, on the offline tiny demo config."""

import json
from pathlib import Path

import pytest
import torch

from cli_runner import run_rmtrain
from recipe_variants import recipe_variant

LOG_KEYS = (
    "lr",
    "eta",
    "time",
    "data_time",
    "memory",
    "loss",
    "acc",
    "chosen_score_mean",
    "rejected_score_mean",
    "num_samples",
    "num_tokens",
)


def small_demo_config(tmp_path: Path, name: str, extra: str = "", **settings) -> Path:
    """The shipped tiny demo with some PART 1 settings replaced (e.g. num_pairs=96)."""
    return recipe_variant(tmp_path, name, extra=extra, **settings)


def read_scalars(work_dir: Path) -> list[dict]:
    (scalars,) = work_dir.glob("*/vis_data/scalars.json")
    return [json.loads(line) for line in scalars.read_text().splitlines()]


@pytest.mark.slow
def test_copied_demo_config_trains_and_learns(tmp_path):
    copy = run_rmtrain("copy-cfg", "tiny_llama_reward_full_demo", str(tmp_path), cwd=tmp_path)
    config = tmp_path / "tiny_llama_reward_full_demo_copy.py"
    assert config.is_file(), copy.stdout
    work_dir = tmp_path / "work"
    # One of its two epochs (125 steps) shows the same as both, in half the time.
    result = run_rmtrain(
        "train", str(config), "--work-dir", str(work_dir), "--cfg-options", "train_cfg.max_epochs=1", cwd=tmp_path
    )

    train_lines = [line for line in (result.stdout + result.stderr).splitlines() if "Iter(train)" in line]
    assert train_lines, "no training log lines"
    for key in LOG_KEYS:
        assert f" {key}: " in train_lines[-1], f"log line lacks '{key}': {train_lines[-1]}"

    scalars = [row for row in read_scalars(work_dir) if "loss" in row]
    first, last = scalars[:3], scalars[-5:]

    def mean(rows, key):
        return sum(row[key] for row in rows) / len(rows)

    assert mean(last, "loss") < 0.6 * mean(first, "loss"), (mean(first, "loss"), mean(last, "loss"))
    assert mean(last, "acc") > 0.8, mean(last, "acc")
    # num_tokens counts real tokens: below the padded size of 2 * 16 rows * 96 tokens.
    assert all(0 < row["num_tokens"] < 2 * 16 * 96 for row in scalars)
    assert all(row["num_samples"] == 16 for row in scalars)

    checkpoints = sorted(work_dir.glob("iter_*.pth"))
    assert [p.name for p in checkpoints] == ["iter_100.pth", "iter_125.pth"]  # keeps the last 2
    assert list(work_dir.glob("*/vis_data/events.out.tfevents.*")), "no TensorBoard events"


@pytest.mark.slow
def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    # 96 pairs / 4 per batch = 24 iterations; accumulation 2 with a checkpoint every 5 iterations,
    # so the crash at iteration 8 resumes from iteration 5, in the middle of an accumulation window.
    settings = dict(
        num_pairs=96,
        batch_size=4,
        accumulative_counts=2,
        max_epochs=1,
        save_steps=5,
        save_total_limit=-1,
        log_interval=1,
    )
    full = small_demo_config(tmp_path, "full", **settings)
    crash = small_demo_config(
        tmp_path,
        "crash",
        **settings,
        extra="\nfrom train_stop_hook import StopAtIterHook\ncustom_hooks = [dict(type=StopAtIterHook, stop_at=8)]\n",
    )
    here = Path(__file__).parent

    run_rmtrain("train", str(full), "--work-dir", str(tmp_path / "a"), cwd=tmp_path)
    crashed = run_rmtrain(
        "train", str(crash), "--work-dir", str(tmp_path / "b"), cwd=tmp_path, pythonpath=here, check=False
    )
    assert crashed.returncode == 17
    assert (tmp_path / "b" / "last_checkpoint").read_text().strip().endswith("iter_5.pth")
    assert not (tmp_path / "b" / "iter_24.pth").exists()

    # Resume with the uninterrupted config (the crash hook is not part of the recipe).
    run_rmtrain("train", str(full), "--work-dir", str(tmp_path / "b"), "--resume", "auto", cwd=tmp_path)

    a = torch.load(tmp_path / "a" / "iter_24.pth", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "b" / "iter_24.pth", map_location="cpu", weights_only=False)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    early = torch.load(tmp_path / "a" / "iter_5.pth", map_location="cpu", weights_only=False)
    assert not torch.equal(a["state_dict"]["v_head.weight"], early["state_dict"]["v_head.weight"])  # it trained


def test_bad_record_fails_before_training(tmp_path):
    data = tmp_path / "pairs.jsonl"
    records = [
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."},
        {"prompt": "Say bye", "chosen": "Bye!", "rejected": "No."},
        {"prompt": "Say yes", "chosen": "Yes!"},  # no rejected
    ]
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    config = small_demo_config(tmp_path, "bad_data")
    text = config.read_text().replace(
        "demo_data = dict(type=build_demo_preference_data, num_pairs=round(num_pairs / (1 - val_split)), seed=data_seed)",
        f"demo_data = dict(type='rmtrain.data.load_jsonl_dataset', data_files={str(data)!r})",
    )
    config.write_text(text)
    work_dir = tmp_path / "work"
    result = run_rmtrain("train", str(config), "--work-dir", str(work_dir), cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert str(data) in result.stderr and "record 2" in result.stderr and "'rejected'" in result.stderr
    assert not list(work_dir.glob("iter_*.pth"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["tiny_llama_reward_demo"], "Closest names: tiny_llama_reward_"),
        (["missing_file.py"], "config file not found"),
        (["tiny_llama_reward_full_demo", "--cfg-options", "optim_wrapper.optimzer.lr=1e-4"], "Did you mean"),
        (["tiny_llama_reward_full_demo", "--deepspeed", "zero9"], "zero2, zero2_offload, zero3"),
    ],
)
def test_train_rejects_bad_arguments_clearly(tmp_path, args, message):
    result = run_rmtrain("train", *args, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr

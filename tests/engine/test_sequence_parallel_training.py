"""`sequence_parallel_size` through `rmtrain train` (torchrun, gloo, CPU) on the tiny demo recipe.

Processes that split each row (SP=2), alone or as 2 data-parallel groups, train as one process
on the same global batch: the same losses, validation and weights; logged counts count each pair
once; DeepSpeed runs too; a crash is resumed bit for bit; the checkpoint converts. The start-up checks
fail before the model loads, naming the setting.
"""

import json
import signal
from pathlib import Path

import pytest
import torch

from cli_runner import failure_text, run_rmtrain
from recipe_variants import recipe_variant
from rmtrain.checkpoints import deepspeed_model_state_dict, load_checkpoint_file

HERE = Path(__file__).parent  # fault_hooks.py
# The recipe of this checkout (the installed rmtrain.configs may be another checkout's).
RECIPE = str(HERE.parents[1] / "configs" / "tiny_llama_reward_full_demo.py")
TINY_MODEL = [
    ("hidden_size=128", "hidden_size=32"),
    ("intermediate_size=256", "intermediate_size=64"),
    ("num_hidden_layers=4", "num_hidden_layers=2"),
]
# 64 training pairs / 8 per global batch = 8 iterations; validation at the end.
SMALL = dict(num_pairs=64, max_epochs=1, save_steps=4, val_interval=8, log_interval=1, mixed_precision="float32")


def variant(folder: Path, name: str, extra: str = "", replacements=(), **settings) -> Path:
    return recipe_variant(
        folder, name, RECIPE, extra=extra, replacements=[*TINY_MODEL, *replacements], **{**SMALL, **settings}
    )


def train(config: Path, work_dir: Path, *args, nproc: int = 1, new_session: bool = False):
    return run_rmtrain(
        "train", config, "--work-dir", work_dir, *args, cwd=config.parent, nproc=nproc, pythonpath=HERE,
        check=False, timeout=600, new_session=new_session,
    )  # fmt: skip


def logged(work_dir: Path, key: str) -> list[float]:
    scalars = sorted(work_dir.glob("*/vis_data/scalars.json"))[-1]
    return [row[key] for row in map(json.loads, scalars.read_text().splitlines()) if key in row]


def final_weights(work_dir: Path) -> dict:
    return load_checkpoint_file(str(work_dir / "iter_8.pth"))["state_dict"]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[key] - b[key]).abs().max().item() for key in a)


def assert_same_training(reference: Path, work: Path) -> None:
    expected, got = logged(reference, "loss"), logged(work, "loss")
    assert len(expected) == len(got) == 8
    assert max(abs(a - b) for a, b in zip(expected, got)) < 1e-4, (expected, got)
    assert logged(work, "num_samples") == logged(reference, "num_samples")  # each pair counted once
    assert logged(work, "num_tokens") == logged(reference, "num_tokens")
    assert logged(work, "val/pairs") == logged(reference, "val/pairs")
    assert abs(logged(work, "val/accuracy")[-1] - logged(reference, "val/accuracy")[-1]) < 1e-6


@pytest.fixture(scope="module")
def padded_reference(tmp_path_factory):
    """One process, 8 pairs per step."""
    folder = tmp_path_factory.mktemp("reference")
    config = variant(folder, "reference", batch_size=8)
    result = train(config, folder / "work")
    assert result.returncode == 0, failure_text(result)
    return folder / "work"


@pytest.mark.slow
def test_two_processes_splitting_rows_train_as_one_process_and_convert(tmp_path, padded_reference):
    config = variant(tmp_path, "sp2", batch_size=8, sequence_parallel_size=2)
    result = train(config, tmp_path / "work", nproc=2)
    assert result.returncode == 0, failure_text(result)
    assert_same_training(padded_reference, tmp_path / "work")
    assert max_difference(final_weights(padded_reference), final_weights(tmp_path / "work")) < 1e-4

    # Parameters are not sharded: rank 0's checkpoint is the model, and it exports (score round trip checked).
    converted = run_rmtrain(
        "convert", "pth_to_hf", config, tmp_path / "work" / "iter_8.pth", tmp_path / "hf", cwd=tmp_path, check=False
    )
    assert converted.returncode == 0, failure_text(converted)
    assert (tmp_path / "hf" / "config.json").is_file()


@pytest.mark.slow
def test_two_data_parallel_groups_of_two_train_as_one_process(tmp_path, padded_reference):
    config = variant(tmp_path, "sp2dp2", batch_size=4, sequence_parallel_size=2)
    result = train(config, tmp_path / "work", nproc=4)
    assert result.returncode == 0, failure_text(result)
    assert_same_training(padded_reference, tmp_path / "work")
    assert max_difference(final_weights(padded_reference), final_weights(tmp_path / "work")) < 1e-4


@pytest.mark.slow
def test_packed_rows_split_under_deepspeed_train_as_one_process(tmp_path):
    # One packed bin per step; the bins of 256 tokens hold a few pairs each.
    packed = dict(use_varlen_attn=True, max_packed_length=256, num_pairs=32)
    reference = variant(tmp_path, "reference", **packed)
    expected = train(reference, tmp_path / "a")
    assert expected.returncode == 0, failure_text(expected)
    config = variant(tmp_path, "sp2", sequence_parallel_size=2, **packed)
    got = train(config, tmp_path / "b", "--deepspeed", "zero2", nproc=2)
    assert got.returncode == 0, failure_text(got)
    losses_a, losses_b = logged(tmp_path / "a", "loss"), logged(tmp_path / "b", "loss")
    assert len(losses_a) == len(losses_b) > 0
    assert max(abs(a - b) for a, b in zip(losses_a, losses_b)) < 1e-4, (losses_a, losses_b)
    assert logged(tmp_path / "b", "num_samples") == logged(tmp_path / "a", "num_samples")
    last = max((tmp_path / "b").glob("iter_*.pth"), key=lambda path: int(path.stem.split("_")[1]))
    plain = load_checkpoint_file(str(tmp_path / "a" / last.name))["state_dict"]
    assert max_difference(plain, deepspeed_model_state_dict(str(last))) < 1e-4


KILL_HOOK = "\nfrom fault_hooks import KillDuringSaveHook\ncustom_hooks = [dict(type=KillDuringSaveHook, at=6)]\n"


@pytest.mark.slow
def test_kill_and_resume_under_sequence_parallelism_ends_with_identical_weights(tmp_path):
    settings = dict(batch_size=4, num_pairs=32, save_steps=3, save_total_limit=1, sequence_parallel_size=2)
    full = variant(tmp_path, "full", **settings)
    killed = variant(tmp_path, "killed", extra=KILL_HOOK, **settings)
    reference = train(full, tmp_path / "a", nproc=2, new_session=True)
    assert reference.returncode == 0, failure_text(reference)

    work = tmp_path / "b"
    crash = train(killed, work, nproc=2, new_session=True)
    assert crash.returncode == -signal.SIGKILL, failure_text(crash)
    assert (work / "last_checkpoint").read_text().strip().endswith("iter_3.pth")
    resumed = train(full, work, "--resume", "auto", nproc=2, new_session=True)
    assert resumed.returncode == 0, failure_text(resumed)
    assert "resumed epoch: 0, iter: 3" in resumed.stdout + resumed.stderr
    a, b = final_weights(tmp_path / "a"), final_weights(work)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings, replacements, message",
    [
        (dict(sequence_parallel_size=2), [], "world size 1 (processes) must be a multiple"),
        (dict(sequence_parallel_size=2), [("num_attention_heads=4", "num_attention_heads=2"),
                                          ("num_key_value_heads=2", "num_key_value_heads=1")],
         "num_key_value_heads=1 must divide"),
        (dict(sequence_parallel_size=2, use_varlen_attn=True, max_packed_length=255), [],
         "max_packed_length=255 must divide"),
    ],
    ids=["world", "heads", "packed length"],
)  # fmt: skip
def test_start_up_checks_name_the_setting(tmp_path, settings, replacements, message):
    config = variant(tmp_path, "bad", replacements=replacements, **settings)
    result = train(config, tmp_path / "work")
    assert result.returncode == 2, failure_text(result)
    assert "sequence_parallel_size" in result.stderr and message in result.stderr, failure_text(result)
    assert not list((tmp_path / "work").glob("*/vis_data"))  # stopped before training

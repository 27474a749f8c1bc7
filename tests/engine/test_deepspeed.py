"""DeepSpeed ZeRO through `rmtrain train --deepspeed`: 2 processes (torchrun, gloo) on CPU, the offline demo.

The first DeepSpeed run on a machine builds DeepSpeed's shared-memory op (~25 s, cached afterwards
under ~/.cache/torch_extensions).
"""

import json
from pathlib import Path

import pytest
import torch

from cli_runner import run_rmtrain
from recipe_variants import recipe_variant
from rmtrain.checkpoints import deepspeed_model_state_dict, is_deepspeed_checkpoint

# 64 pairs, 8 per step over the 2 processes: 8 iterations, checkpoints at 4 and 8.
SETTINGS = dict(num_pairs=64, batch_size=4, max_epochs=1, mixed_precision="float32", log_interval=1, save_steps=4)
TRUNK_WEIGHT = "model.layers.0.self_attn.q_proj.weight"
HERE = Path(__file__).parent  # train_stop_hook.py


def rmtrain(*args, cwd, nproc=1, pythonpath=(), check=True):
    return run_rmtrain(*args, cwd=cwd, nproc=nproc, pythonpath=pythonpath or (), check=check, timeout=600)


# A zero-initialised head, so that a non-zero head after training shows that it trained.
ZERO_HEAD = [
    ("    penalty_weight=penalty_weight,\n", '    penalty_weight=penalty_weight,\n    value_head_init="zeros",\n')
]


def demo_config(folder: Path, name: str, extra: str = "", replacements=(), **changes) -> Path:
    return recipe_variant(
        folder, name, extra=extra, replacements=[*ZERO_HEAD, *replacements], **{**SETTINGS, **changes}
    )


def logged_losses(work_dir: Path) -> list[float]:
    """Per-iteration `loss` of the newest run in `work_dir` (rank 0 logs the mean over ranks)."""
    scalars = sorted(work_dir.glob("*/vis_data/scalars.json"))[-1]
    return [row["loss"] for row in map(json.loads, scalars.read_text().splitlines()) if "loss" in row]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[key] - b[key]).abs().max().item() for key in a)


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory):
    """An uninterrupted 2-process ZeRO-2 run, shared by the tests below."""
    folder = tmp_path_factory.mktemp("zero2")
    config = demo_config(folder, "zero2")
    rmtrain("train", str(config), "--work-dir", str(folder / "work"), "--deepspeed", "zero2", cwd=folder, nproc=2)
    return config, folder / "work"


@pytest.mark.slow
def test_zero2_on_two_processes_matches_one_process_without_deepspeed(zero2_run, tmp_path):
    _, work = zero2_run
    # FlexibleRunner writes each checkpoint as a DeepSpeed folder: the model states and one
    # optimizer partition per rank.
    assert sorted(p.name for p in (work / "iter_8.pth").iterdir()) == [
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    reference = demo_config(tmp_path, "reference", batch_size=8)
    rmtrain("train", str(reference), "--work-dir", str(tmp_path / "work"), cwd=tmp_path)

    expected, got = logged_losses(tmp_path / "work"), logged_losses(work)
    assert len(expected) == len(got) == 8
    assert max(abs(a - b) for a, b in zip(expected, got)) < 1e-4, (expected, got)

    plain = torch.load(tmp_path / "work" / "iter_8.pth", map_location="cpu", weights_only=False)["state_dict"]
    zero2 = deepspeed_model_state_dict(str(work / "iter_8.pth"))
    for key in ("v_head.weight", TRUNK_WEIGHT):
        assert (plain[key] - zero2[key]).abs().max().item() < 1e-3, key
    assert plain["v_head.weight"].abs().max() > 1e-3  # it trained


@pytest.mark.slow
def test_zero3_checkpoint_gathers_and_converts(zero2_run, tmp_path):
    config = demo_config(tmp_path, "zero3")
    work = tmp_path / "work"
    rmtrain("train", str(config), "--work-dir", str(work), "--deepspeed", "deepspeed_zero3", cwd=tmp_path, nproc=2)
    checkpoint = work / "iter_8.pth"
    assert is_deepspeed_checkpoint(str(checkpoint))
    assert (work / "last_checkpoint").read_text().strip() == str(checkpoint)

    # The weights gathered from both ranks' ZeRO-3 partitions are those that ZeRO-2 trained.
    gathered = deepspeed_model_state_dict(str(checkpoint))
    assert max_difference(gathered, deepspeed_model_state_dict(str(zero2_run[1] / "iter_8.pth"))) < 1e-3

    exported = tmp_path / "hf"
    result = rmtrain("convert", "pth_to_hf", str(config), str(checkpoint), str(exported), "--fp32", cwd=tmp_path)
    assert "verification: the folder reloaded through transformers scores" in result.stderr + result.stdout
    assert (exported / "model.safetensors").is_file() and (exported / "config.json").is_file()


@pytest.mark.slow
def test_resume_after_crash_matches_uninterrupted_zero2_run(zero2_run, tmp_path):
    uninterrupted_config, uninterrupted = zero2_run
    crash = demo_config(
        tmp_path, "crash",
        extra="\nfrom train_stop_hook import StopAtIterHook\ncustom_hooks = [dict(type=StopAtIterHook, stop_at=6)]\n",
    )  # fmt: skip
    work = tmp_path / "work"
    crashed = rmtrain("train", str(crash), "--work-dir", str(work), "--deepspeed", "zero2", cwd=tmp_path, nproc=2,
                      pythonpath=HERE, check=False)  # fmt: skip
    assert crashed.returncode != 0  # torchrun reports the ranks' exit code 17 as a failure
    assert (work / "last_checkpoint").read_text().strip() == str(work / "iter_4.pth")
    assert not (work / "iter_8.pth").exists()

    # Resume with the uninterrupted config (the crash hook is not part of the recipe).
    rmtrain("train", str(uninterrupted_config), "--work-dir", str(work), "--deepspeed", "zero2", "--resume", "auto",
            cwd=tmp_path, nproc=2)  # fmt: skip
    resumed_losses, full_losses = logged_losses(work), logged_losses(uninterrupted)
    assert len(resumed_losses) == 4  # iterations 5-8 only
    assert max(abs(a - b) for a, b in zip(resumed_losses, full_losses[4:])) < 1e-6
    resumed = deepspeed_model_state_dict(str(work / "iter_8.pth"))
    assert max_difference(resumed, deepspeed_model_state_dict(str(uninterrupted / "iter_8.pth"))) <= 1e-5


def test_unknown_deepspeed_config_lists_the_builtin_names(tmp_path):
    result = rmtrain("train", "tiny_llama_reward_full_demo", "--deepspeed", "zero9", cwd=tmp_path, nproc=2, check=False)
    assert result.returncode == 2
    for name in ("zero1", "zero2", "zero2_offload", "zero3", "zero3_offload"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("stage", "partitioned"), [(2, False), (3, True)])
def test_zero3_models_are_built_under_zero_init(stage, partitioned):
    # transformers builds models under deepspeed.zero.Init exactly while this reports True.
    from transformers.integrations import is_deepspeed_zero3_enabled

    from rmtrain.engine.deepspeed import zero3_construction

    config = {"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}}
    with zero3_construction(config):
        assert is_deepspeed_zero3_enabled() is partitioned
    assert is_deepspeed_zero3_enabled() is False


@pytest.mark.slow
def test_zero3_bf16_run_with_a_partitioned_trunk(tmp_path):
    # bf16 (DeepSpeed's bf16 path), ZeRO-3, the trunk built by AutoModel.from_config: under zero.Init.
    config = demo_config(
        tmp_path, "zero3_bf16", num_pairs=32, mixed_precision="bfloat16",
        replacements=[("from transformers import ", "from transformers import AutoModel, "),
                      ("type=LlamaModel,", "type=AutoModel.from_config,")],
    )  # fmt: skip
    work = tmp_path / "work"
    rmtrain("train", str(config), "--work-dir", str(work), "--deepspeed", "zero3", cwd=tmp_path, nproc=2)
    # DeepSpeed's bf16 path wrote the optimizer partitions (fp32 master weights of bf16 parameters).
    files = sorted(p.name for p in (work / "iter_4.pth").iterdir())
    assert files[:2] == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    states = torch.load(work / "iter_4.pth" / files[2], map_location="cpu", weights_only=False)
    assert states["ds_config"]["bf16"] == {"enabled": True} and states["ds_config"]["zero_optimization"]["stage"] == 3
    scalars = sorted(work.glob("*/vis_data/scalars.json"))[-1]
    rows = [row for row in map(json.loads, scalars.read_text().splitlines()) if "loss" in row]
    assert len(rows) == 4 and all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)
    assert rows[0]["chosen_score_mean"] == 0.0  # the value head starts at zero, partitioned or not
    gathered = deepspeed_model_state_dict(str(work / "iter_4.pth"))
    assert gathered["v_head.weight"].abs().max() > 0  # it trained
    assert gathered[TRUNK_WEIGHT].dtype in (torch.bfloat16, torch.float32)

"""Two processes on CPU (gloo) compute what one process computes; resume and rank failures behave."""

import json
import time
from pathlib import Path

import pytest
import torch

from cli_runner import failure_text, run_rmtrain
from recipe_variants import recipe_variant
from rmtrain.engine.launch import first_slurm_host, slurm_environment, torchrun_command
from rmtrain.errors import ConfigError

HERE = Path(__file__).parent
SMALL = dict(num_pairs=64, batch_size=4, max_epochs=1, save_steps=4, log_interval=1, mixed_precision="float32")


def config_variant(folder: Path, name: str, extra: str = "", **settings) -> Path:
    return recipe_variant(folder, name, extra=extra, **{**SMALL, **settings})


def rmtrain_train(config: Path, work_dir: Path, *args, nproc: int = 1, timeout: int = 600):
    return run_rmtrain(
        "train", config, "--work-dir", work_dir, *args, cwd=config.parent, nproc=nproc, pythonpath=HERE,
        check=False, timeout=timeout,
    )  # fmt: skip


def logged(work_dir: Path, key: str) -> list[float]:
    (scalars,) = work_dir.glob("*/vis_data/scalars.json")
    return [json.loads(line)[key] for line in scalars.read_text().splitlines() if key in line]


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_two_processes_match_one_process_with_twice_the_batch(tmp_path):
    one = config_variant(tmp_path, "one", batch_size=8)
    two = config_variant(tmp_path, "two", batch_size=4)
    a = rmtrain_train(one, tmp_path / "a")
    assert a.returncode == 0, failure_text(a)
    b = rmtrain_train(two, tmp_path / "b", nproc=2)
    assert b.returncode == 0, failure_text(b)

    loss_a, loss_b = logged(tmp_path / "a", "loss"), logged(tmp_path / "b", "loss")
    assert len(loss_a) == len(loss_b) == 8  # 64 pairs / 8 per step
    assert max(abs(x - y) for x, y in zip(loss_a, loss_b)) < 1e-4, (loss_a, loss_b)
    assert logged(tmp_path / "b", "num_samples") == [8.0] * 8  # summed over both ranks
    wa, wb = weights(tmp_path / "a" / "iter_8.pth"), weights(tmp_path / "b" / "iter_8.pth")
    assert max((wa[key] - wb[key]).abs().max().item() for key in wa) < 1e-3


@pytest.mark.slow
def test_two_process_run_resumes_to_the_same_weights(tmp_path):
    # Accumulation 2, checkpoint every 4 iterations; rank 0 and rank 1 both die at iteration 6.
    settings = dict(accumulative_counts=2, num_pairs=96, save_total_limit=-1)
    full = config_variant(tmp_path, "full", **settings)
    crash = config_variant(
        tmp_path,
        "crash",
        **settings,
        extra="\nfrom train_stop_hook import StopAtIterHook\ncustom_hooks = [dict(type=StopAtIterHook, stop_at=6)]\n",
    )
    assert rmtrain_train(full, tmp_path / "a", nproc=2).returncode == 0
    crashed = rmtrain_train(crash, tmp_path / "b", nproc=2)
    assert crashed.returncode != 0
    assert (tmp_path / "b" / "last_checkpoint").read_text().strip().endswith("iter_4.pth")
    resumed = rmtrain_train(full, tmp_path / "b", "--resume", "auto", nproc=2)
    assert resumed.returncode == 0, failure_text(resumed)
    wa, wb = weights(tmp_path / "a" / "iter_12.pth"), weights(tmp_path / "b" / "iter_12.pth")
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.mark.slow
def test_a_dying_rank_ends_the_job_with_a_message_instead_of_a_hang(tmp_path):
    crash = config_variant(
        tmp_path,
        "crash",
        extra="\nfrom train_stop_hook import StopAtIterHook\ncustom_hooks = [dict(type=StopAtIterHook, stop_at=3, only_rank=1)]\n",
    )
    start = time.monotonic()
    result = rmtrain_train(crash, tmp_path / "w", nproc=2, timeout=300)
    assert result.returncode != 0
    assert time.monotonic() - start < 240
    assert "exitcode  : 17" in result.stderr or "exitcode: 17" in result.stderr, failure_text(result)


def test_torchrun_command_from_environment(monkeypatch):
    monkeypatch.setenv("NPROC_PER_NODE", "8")
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("ADDR", "10.0.0.1")
    monkeypatch.setenv("PORT", "29500")
    command = torchrun_command(["train", "cfg.py", "--seed", "3"])
    assert command[1:3] == ["-m", "torch.distributed.run"]
    for part in ("--nnodes=2", "--node_rank=1", "--nproc_per_node=8", "--master_addr=10.0.0.1", "--master_port=29500"):
        assert part in command
    assert command[-6:] == ["train", "cfg.py", "--seed", "3", "--launcher", "pytorch"]


def test_torchrun_picks_a_free_port_on_one_node_and_refuses_multi_node_without_address(monkeypatch):
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.delenv("NNODES", raising=False)
    port = int(
        next(part for part in torchrun_command(["train", "x"]) if part.startswith("--master_port=")).split("=")[1]
    )
    assert 0 < port < 65536
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.delenv("ADDR", raising=False)
    with pytest.raises(ConfigError, match="ADDR"):
        torchrun_command(["train", "x"])


@pytest.mark.parametrize(
    "nodelist, first",
    [("localhost", "localhost"), ("node[3-5,9]", "node3"), ("gpu-a[07-08],gpu-b1", "gpu-a07"), ("n1,n2", "n1")],
)
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_slurm_environment(monkeypatch):
    for name, value in dict(
        SLURM_PROCID="3",
        SLURM_NTASKS="16",
        SLURM_LOCALID="3",
        SLURM_NODELIST="node[1-2]",
        SLURM_TASKS_PER_NODE="8(x2)",
        SLURM_JOB_ID="12345",
    ).items():
        monkeypatch.setenv(name, value)
    for name in ("MASTER_ADDR", "MASTER_PORT", "PORT"):
        monkeypatch.delenv(name, raising=False)
    env = slurm_environment()
    assert env == dict(
        RANK="3",
        WORLD_SIZE="16",
        LOCAL_RANK="3",
        LOCAL_WORLD_SIZE="8",
        MASTER_ADDR="node1",
        MASTER_PORT=str(20000 + 12345 % 10000),
    )
    monkeypatch.delenv("SLURM_PROCID")
    with pytest.raises(ConfigError, match="SLURM_PROCID"):
        slurm_environment()

"""`rmtrain train CONFIG --launcher slurm` started by srun on a real (one-node, local) Slurm cluster.

The cluster comes from tools/slurm_local_cluster.sh, which CI runs before pytest; without one these tests skip.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from recipe_variants import recipe_variant

SKIP_REASON = "no local Slurm cluster: run tools/slurm_local_cluster.sh (CI does)"
TIMEOUT_S = 300


def idle_slurm_node() -> bool:
    if not (shutil.which("srun") and shutil.which("sinfo")):
        return False
    try:
        idle = subprocess.run(["sinfo", "-h", "-t", "idle", "-o", "%n"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return False
    return idle.returncode == 0 and bool(idle.stdout.strip())


pytestmark = [pytest.mark.slow, pytest.mark.skipif(not idle_slurm_node(), reason=SKIP_REASON)]


def demo_config(tmp_path: Path, **settings) -> Path:
    """The shipped tiny demo with some PART 1 settings replaced."""
    return recipe_variant(tmp_path, "slurm_demo", **settings)


def srun_train(tmp_path: Path, ntasks: int, config: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """srun -N1 -n<ntasks> python -m rmtrain.cli train CONFIG --launcher slurm, in a job of its own."""
    work_dir = tmp_path / "work"
    job_name = f"rmtrain-test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    # The tasks must take rank, world size and master from Slurm alone, in a new allocation: drop what an
    # outer torchrun or Slurm job may have set.
    for name in list(env):
        if name.startswith("SLURM_") or name in (
            "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PORT",
            "NPROC_PER_NODE", "NNODES", "NODE_RANK", "ADDR",
        ):  # fmt: skip
            del env[name]
    env["RMTRAIN_DIST_TIMEOUT_MINUTES"] = "3"  # a rank that dies does not leave the other waiting for 30 min
    command = [
        "srun", "-N1", f"-n{ntasks}", "--kill-on-bad-exit=1", f"--job-name={job_name}", "--time=10",
        sys.executable, "-m", "rmtrain.cli", "train", str(config), "--launcher", "slurm", "--work-dir", str(work_dir),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", f"--name={job_name}"], check=False)
        raise
    assert result.returncode == 0, f"srun failed ({result.returncode}):\n{(result.stdout + result.stderr)[-6000:]}"
    return result, work_dir


def read_scalars(work_dir: Path) -> list[dict]:
    (scalars,) = work_dir.glob("*/vis_data/scalars.json")
    return [json.loads(line) for line in scalars.read_text().splitlines()]


def assert_trained(result, work_dir: Path, world_size: int, pairs_per_iter: int) -> None:
    (log,) = work_dir.glob("*/*.log")  # mmengine's environment report is in the log file (not on the console)
    report = log.read_text()
    assert "Distributed launcher: slurm" in report, report[-4000:]
    assert f"GPU number: {world_size}" in report, report[-4000:]  # mmengine's name for the world size
    assert sorted(p.name for p in work_dir.glob("iter_*.pth")) == ["iter_4.pth", "iter_8.pth"]
    rows = [row for row in read_scalars(work_dir) if "loss" in row]
    assert [row["iter"] for row in rows] == list(range(1, 9))
    # num_samples is summed over the ranks: the pairs of one global batch.
    assert all(row["num_samples"] == pairs_per_iter for row in rows), [row["num_samples"] for row in rows]
    final = torch.load(work_dir / "iter_8.pth", map_location="cpu", weights_only=False)
    assert final["meta"]["iter"] == 8
    halfway = torch.load(work_dir / "iter_4.pth", map_location="cpu", weights_only=False)
    v_head = final["state_dict"]["v_head.weight"]
    assert not torch.equal(v_head, halfway["state_dict"]["v_head.weight"])  # the head kept training


def test_srun_two_tasks_train_one_ddp_job(tmp_path):
    # 64 pairs / (4 pairs x 2 ranks) = 8 iterations, checkpoints at 4 and 8.
    config = demo_config(tmp_path, num_pairs=64, batch_size=4, max_epochs=1, save_steps=4, log_interval=1)
    result, work_dir = srun_train(tmp_path, 2, config)
    (log,) = work_dir.glob("*/*.log")  # the environment report is in the log file (not on the console)
    assert "Distributed training: True" in log.read_text()
    assert_trained(result, work_dir, world_size=2, pairs_per_iter=8)


def test_srun_one_task_trains_alone(tmp_path):
    # World size 1 through the slurm launcher: 32 pairs / 4 = 8 iterations.
    config = demo_config(tmp_path, num_pairs=32, batch_size=4, max_epochs=1, save_steps=4, log_interval=1)
    result, work_dir = srun_train(tmp_path, 1, config)
    assert_trained(result, work_dir, world_size=1, pairs_per_iter=4)

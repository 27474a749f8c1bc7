"""Start processes and join them into one training job: torchrun, `--launcher pytorch`, `--launcher slurm`.

- `NPROC_PER_NODE=8 rmtrain train CFG` (and NNODES, NODE_RANK, ADDR, PORT) re-runs the same command
  under torchrun with `--launcher pytorch` appended.
- `--launcher pytorch`: torchrun (ours or the user's) has set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*.
- `--launcher slurm`: each task started by `srun` reads SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and
  SLURM_NODELIST; the first node of the list is the master.
"""

import datetime
import os
import re
import socket
import subprocess
import sys

from rmtrain.errors import ConfigError

TIMEOUT_VARIABLE = "RMTRAIN_DIST_TIMEOUT_MINUTES"  # collectives fail after this, so a dead rank cannot hang the rest


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    if not value.isdigit():
        raise ConfigError(f"environment variable {name}={value!r} must be a whole number")
    return int(value)


def torchrun_requested() -> bool:
    return _env_int("NPROC_PER_NODE", 1) > 1 or _env_int("NNODES", 1) > 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(cli_args: list[str]) -> list[str]:
    """The torchrun command that re-runs `rmtrain <cli_args>` in every process, from the environment."""
    nnodes = _env_int("NNODES", 1)
    if nnodes > 1 and not (os.environ.get("ADDR") and os.environ.get("PORT")):
        raise ConfigError("NNODES>1 needs ADDR (the master node's address) and PORT, the same on every node")
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--node_rank={_env_int('NODE_RANK', 0)}",
        f"--nproc_per_node={_env_int('NPROC_PER_NODE', 1)}",
        f"--master_addr={os.environ.get('ADDR', '127.0.0.1')}",
        f"--master_port={os.environ.get('PORT') or free_port()}",
        "-m", "rmtrain.cli", *cli_args, "--launcher", "pytorch",
    ]  # fmt: skip


def launch_with_torchrun(cli_args: list[str]) -> int:
    return subprocess.call(torchrun_command(cli_args))


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'node[3-5,9],gpu1' -> 'node3'; 'localhost' -> 'localhost'."""
    match = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not match:
        raise ConfigError(f"cannot read SLURM_NODELIST={nodelist!r}")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{first}"


def slurm_environment() -> dict:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT from the Slurm task environment."""
    needed = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODELIST")
    missing = [name for name in needed if name not in os.environ]
    if missing:
        raise ConfigError(
            f"--launcher slurm needs the Slurm task environment, but {', '.join(missing)} is not set; "
            "start the command with srun (e.g. srun -N1 -n2 rmtrain train CONFIG --launcher slurm)"
        )
    job_id = _env_int("SLURM_JOB_ID", 0)
    return {
        "RANK": os.environ["SLURM_PROCID"],
        "WORLD_SIZE": os.environ["SLURM_NTASKS"],
        "LOCAL_RANK": os.environ["SLURM_LOCALID"],
        # SLURM_TASKS_PER_NODE reads like "8(x2)" or "2,1": this node's share is close enough to the first.
        "LOCAL_WORLD_SIZE": os.environ.get("SLURM_TASKS_PER_NODE", os.environ["SLURM_NTASKS"])
        .split(",")[0]
        .split("(")[0],
        "MASTER_ADDR": os.environ.get("MASTER_ADDR") or first_slurm_host(os.environ["SLURM_NODELIST"]),
        # The same port in every task of the job, different between jobs sharing a node.
        "MASTER_PORT": os.environ.get("MASTER_PORT") or os.environ.get("PORT") or str(20000 + job_id % 10000),
    }


def cuda_device_index(local_rank: int) -> int:
    """The GPU this process drives: its local rank among the GPUs it can see.

    Under Slurm's GPU binding (`--gpus-per-task=1`, `--gpu-bind`) each task sees only its own GPU, as
    device 0, while SLURM_LOCALID still counts the tasks of the node: wrap it around what is visible.
    """
    import torch

    visible = torch.cuda.device_count()
    if visible < 1:
        raise ConfigError("CUDA is available but no GPU is visible to this process (check CUDA_VISIBLE_DEVICES)")
    return local_rank % visible


def init_distributed(launcher: str) -> None:
    """Join the process group: NCCL with GPUs, gloo on CPU, with a timeout on every collective."""
    import torch
    import torch.distributed as dist

    if launcher == "slurm":
        os.environ.update(slurm_environment())
    elif launcher != "pytorch":
        raise ConfigError(f"unknown launcher '{launcher}' (none, pytorch or slurm)")
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ConfigError(f"--launcher pytorch expects torchrun's environment; {', '.join(missing)} is not set")
    os.environ.setdefault("LOCAL_RANK", "0")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        device_index = cuda_device_index(local_rank)
        torch.cuda.set_device(device_index)
        # mmengine's DDP wrapper and DeepSpeed take LOCAL_RANK as the device ordinal.
        os.environ["LOCAL_RANK"] = str(device_index)
        backend = "nccl"
    else:
        backend = "gloo"
        # torchrun sets one thread per process; share the cores among the processes of this node.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    timeout = datetime.timedelta(minutes=float(os.environ.get(TIMEOUT_VARIABLE, "30")))
    dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)

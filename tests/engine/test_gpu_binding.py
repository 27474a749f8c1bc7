"""The GPU each process drives under Slurm's GPU binding, with torch.cuda mocked (runs on CPU)."""

import os

import pytest
import torch
import torch.distributed as dist

from rmtrain.engine import launch

SLURM_TASK = {
    "SLURM_PROCID": "3",
    "SLURM_NTASKS": "4",
    "SLURM_LOCALID": "3",
    "SLURM_NODELIST": "gpu[1-4]",
    "SLURM_JOB_ID": "7",
    "SLURM_TASKS_PER_NODE": "4",
}


def _init_as_slurm_task(monkeypatch, visible_gpus: int) -> list[int]:
    for name, value in SLURM_TASK.items():
        monkeypatch.setenv(name, value)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        # setenv first, so that teardown also removes what init_distributed writes (a bare delenv of an
        # absent name records nothing, and a leftover LOCAL_RANK makes later tests wait for a process group)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible_gpus)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: chosen.append(kwargs["backend"]))
    launch.init_distributed("slurm")
    return chosen


def test_a_task_bound_to_one_gpu_drives_device_0(monkeypatch):
    # srun --gpus-per-task=1: task 3 of the node sees its one GPU as device 0.
    assert _init_as_slurm_task(monkeypatch, visible_gpus=1) == [0, "nccl"]
    assert os.environ["LOCAL_RANK"] == "0"  # what mmengine's DDP wrapper and DeepSpeed take as the ordinal
    assert os.environ["RANK"] == "3"


def test_a_task_that_sees_every_gpu_of_the_node_drives_its_local_id(monkeypatch):
    assert _init_as_slurm_task(monkeypatch, visible_gpus=4) == [3, "nccl"]
    assert os.environ["LOCAL_RANK"] == "3"


@pytest.mark.parametrize(("local_rank", "visible", "index"), [(0, 8, 0), (5, 8, 5), (5, 1, 0), (3, 2, 1)])
def test_cuda_device_index(monkeypatch, local_rank, visible, index):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert launch.cuda_device_index(local_rank) == index


def test_objects_are_shared_over_gloo_when_the_default_backend_is_nccl(monkeypatch):
    from rmtrain.engine import distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{launch.free_port()}", rank=0, world_size=1)
    try:
        groups, broadcasts = [], []
        real_new_group, real_broadcast = dist.new_group, dist.broadcast_object_list
        monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
        monkeypatch.setattr(
            dist, "new_group", lambda **kwargs: groups.append(kwargs) or real_new_group(backend=kwargs["backend"])
        )

        def recording_broadcast(objects, src=0, group=None, **kwargs):
            broadcasts.append(group)
            return real_broadcast(objects, src=src, group=group, **kwargs)

        monkeypatch.setattr(dist, "broadcast_object_list", recording_broadcast)
        assert distributed.on_rank0_then_share(lambda: {"pairs": 3}) == {"pairs": 3}
        assert distributed.on_rank0_then_share(lambda: 7) == 7
        assert groups == [{"backend": "gloo"}]  # made once, then reused
        assert len(broadcasts) == 2 and broadcasts[0] is not None and broadcasts[0] is broadcasts[1]
    finally:
        dist.destroy_process_group()

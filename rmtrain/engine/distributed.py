"""Small helpers for multi-process runs; each is a no-op in a single process."""

import functools

import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


@functools.cache
def _gloo_group_beside(default_group) -> dist.ProcessGroup:
    return dist.new_group(backend="gloo")  # every rank calls it, at the same point of the run


def object_group():
    """The group Python objects travel in: the default one, or a gloo group beside it when that is NCCL.

    Over NCCL, `broadcast_object_list` pickles the object into one GPU tensor and the waiting ranks
    sit inside NCCL (with its timeout) while rank 0 tokenises; over gloo it stays in host memory.
    """
    if dist.get_backend() != "nccl":
        return None
    return _gloo_group_beside(dist.group.WORLD)


def leave_process_group() -> None:
    """At the end of a run: wait for every rank, then close the process group.

    No rank's process then exits (tearing down its connections) while another still talks to it,
    and the backends' threads stop before the interpreter does.
    """
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def on_rank0_then_share(make):
    """Run `make()` on rank 0 only and hand its result (or its exception) to every rank.

    Used for the data set: tokenised once, not once per rank. An exception on rank 0 is raised on
    every rank, so no rank waits for data that will never come.
    """
    if not is_distributed():
        return make()
    box = [None]
    if rank() == 0:
        try:
            box[0] = ("ok", make())
        except Exception as error:  # shared with the other ranks, then raised everywhere
            box[0] = ("error", error)
    dist.broadcast_object_list(box, src=0, group=object_group())
    status, value = box[0]
    if status == "error":
        raise value
    return value

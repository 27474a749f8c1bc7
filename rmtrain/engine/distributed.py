"""Small helpers for multi-process runs; each is a no-op in a single process."""

import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


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
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value

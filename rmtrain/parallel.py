"""How the processes of a run are split: sequence-parallel groups inside data-parallel ones.

With `sequence_parallel_size = sp` (a top-level config setting), ranks [g * sp, (g + 1) * sp) form
sequence-parallel group g: they read the same batch and each holds a contiguous part of every row.
The groups are the data-parallel units: the data is sharded over world // sp of them, by rank // sp.
Until `init_sequence_parallel` is called (and in one process) every rank is its own group of 1.
"""

import torch.distributed as dist

_size = 1
_group = None


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_sequence_parallel(size: int) -> None:
    """Make the sequence-parallel groups (every rank calls it, at the same point); size 1 undoes it."""
    global _size, _group
    if size == 1 or not _distributed():
        _size, _group = 1, None
        return
    world = dist.get_world_size()
    if world % size:
        raise ValueError(f"world size {world} is not a multiple of sequence_parallel_size={size}")
    mine = None
    for first in range(0, world, size):  # new_group must be called by every rank for every group
        group = dist.new_group(list(range(first, first + size)))
        if first <= dist.get_rank() < first + size:
            mine = group
    _size, _group = size, mine


def sequence_parallel_size() -> int:
    return _size


def sequence_parallel_group():
    """The process group of this rank's sequence-parallel group, or None when sequences are not split."""
    return _group


def sequence_parallel_rank() -> int:
    """This rank's place in its sequence-parallel group: it holds part `sequence_parallel_rank()` of each row."""
    return dist.get_rank() % _size if _size > 1 else 0


def data_parallel_rank_and_size() -> tuple[int, int]:
    """(the data shard this rank reads, the number of shards): (rank // sp, world // sp)."""
    if not _distributed():
        return 0, 1
    return dist.get_rank() // _size, dist.get_world_size() // _size

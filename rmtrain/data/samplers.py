"""mmengine's DefaultSampler sharded over data-parallel groups instead of ranks (sequence parallelism)."""

import math

from mmengine.dataset import DefaultSampler

from rmtrain.parallel import data_parallel_rank_and_size


class SequenceParallelSampler(DefaultSampler):
    """DefaultSampler (same seeded shuffle, same round-up) whose shard is the data-parallel group's:
    the ranks of a sequence-parallel group (`rmtrain.parallel`) draw the same indices.

    `rmtrain train` puts it in place of DefaultSampler when `sequence_parallel_size > 1` (XTuner's
    configs name a sampler of this name for the same job).
    """

    def __init__(self, dataset, shuffle: bool = True, seed: int | None = None, round_up: bool = True):
        super().__init__(dataset, shuffle=shuffle, seed=seed, round_up=round_up)
        self.rank, self.world_size = data_parallel_rank_and_size()
        if self.round_up:
            self.num_samples = math.ceil(len(self.dataset) / self.world_size)
            self.total_size = self.num_samples * self.world_size
        else:
            self.num_samples = math.ceil((len(self.dataset) - self.rank) / self.world_size)
            self.total_size = len(self.dataset)

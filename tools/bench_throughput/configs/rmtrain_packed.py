# The "rmtrain packed" arm of tools/bench_throughput: the padded arm's config with use_varlen_attn=True:
# whole pairs packed into padding-free bins of at most max_packed_length tokens, one bin per optimizer step
# (the benchmark chooses max_packed_length so that a bin holds about P pairs on average).
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler

with read_base():
    from .rmtrain_padded import *  # noqa: F403

train_dataloader.batch_size = 1  # noqa: F405
train_dataloader.sampler = dict(type=DefaultSampler, shuffle=True)  # noqa: F405
train_dataloader.dataset.use_varlen_attn = True  # noqa: F405

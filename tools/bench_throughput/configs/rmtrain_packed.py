# The "rmtrain packed" arm of tools/bench_throughput: the padded arm's config with use_varlen_attn=True:
# each step's pairs (the same window as the padded arm's) laid whole in one padding-free row.
from mmengine.config import read_base

with read_base():
    from .rmtrain_padded import *  # noqa: F403

train_dataloader.batch_size = 1  # noqa: F405
train_dataloader.dataset.use_varlen_attn = True  # noqa: F405

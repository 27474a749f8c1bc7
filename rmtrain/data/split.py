"""Hold out part of a data set for validation: a seeded split of record indices.

The split is made on the raw records, before any map function or tokenizer runs, so the same
file, `val_split` and `split_seed` always give the same parts: on every rank, in every run, and
for the train and the val data set of one config (which therefore never share a record).
"""

import torch

from rmtrain.errors import ConfigError

SPLITS = ("train", "val")


def val_record_count(num_records: int, val_split: float) -> int:
    """How many of `num_records` records `val_split` holds out.

    A float in (0, 1) is a share (rounded, at least one record); a whole number >= 1 is a count.
    At least one record must remain for training.
    """
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)):
        raise ConfigError(f"val_split must be a share in (0, 1) or a record count, got {val_split!r}")
    if 0 < val_split < 1:
        count = max(1, round(val_split * num_records))
    elif val_split >= 1 and float(val_split).is_integer():
        count = int(val_split)
    else:
        raise ConfigError(f"val_split must be a share in (0, 1) or a whole record count >= 1, got {val_split!r}")
    if count >= num_records:
        raise ConfigError(
            f"val_split={val_split!r} holds out {count} of {num_records} records, leaving none for training"
        )
    return count


def split_record_indices(num_records: int, val_split: float, split_seed: int = 0) -> dict[str, list[int]]:
    """{'train': [...], 'val': [...]}: the record indices of each part, in file order.

    A permutation seeded with `split_seed` picks the held-out records; within a part the records
    keep their order, so an evaluation report lists them as the file does.
    """
    count = val_record_count(num_records, val_split)
    order = torch.randperm(num_records, generator=torch.Generator().manual_seed(split_seed)).tolist()
    return {"train": sorted(order[count:]), "val": sorted(order[:count])}

"""Load raw preference records: Hugging Face `datasets` (hub names or local files) and JSONL files."""

import glob
import os

import datasets

from rmtrain.builder import build
from rmtrain.errors import ConfigError, DataError, RmtrainError


def load_jsonl_dataset(data_files=None, data_dir: str | None = None, suffix: str = ".jsonl") -> datasets.Dataset:
    """Load and concatenate JSON-lines files: `data_files` (a path or list) or every `*suffix` in `data_dir`."""
    if data_files is None and data_dir is None:
        raise ConfigError("load_jsonl_dataset needs data_files or data_dir")
    if data_files is None:
        data_files = sorted(glob.glob(os.path.join(data_dir, f"*{suffix}")))
        if not data_files:
            raise RmtrainError(f"no *{suffix} files in {data_dir}")
    if isinstance(data_files, str):
        data_files = [data_files]
    for path in data_files:
        if not os.path.isfile(path):
            raise RmtrainError(f"data file not found: {path}")
        if os.path.getsize(path) == 0:
            raise DataError(path, 0, "*", "the file is empty")
    return datasets.load_dataset("json", data_files=list(data_files), split="train")


def describe_source(dataset_cfg) -> str:
    """A short name for where records come from, used in error messages ("file X, record 12")."""
    if isinstance(dataset_cfg, dict):
        for key in ("data_files", "data_dir", "path"):
            value = dataset_cfg.get(key)
            if value:
                if isinstance(value, dict):
                    value = value.get("train", next(iter(value.values())))
                if isinstance(value, (list, tuple)):
                    value = value[0] if len(value) == 1 else f"{value[0]} (+{len(value) - 1} more files)"
                return str(value)
    cache_files = getattr(dataset_cfg, "cache_files", None)
    if cache_files:
        return cache_files[0]["filename"]
    return "the config's dataset"


def load_records(dataset_cfg, split: str = "train") -> datasets.Dataset:
    """Build the raw data set from its config (or take a built one); a DatasetDict gives `split`."""
    try:
        dataset = build(dataset_cfg)
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__ or error
        raise RmtrainError(f"cannot read {describe_source(dataset_cfg)}: {type(cause).__name__}: {cause}") from error
    except FileNotFoundError as error:
        raise RmtrainError(f"data not found ({describe_source(dataset_cfg)}): {error}") from error
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ConfigError(f"the dataset has no '{split}' split (it has {', '.join(dataset)})")
        dataset = dataset[split]
    if not isinstance(dataset, datasets.Dataset):
        dataset = datasets.Dataset.from_list(list(dataset))
    return dataset

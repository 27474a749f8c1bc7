"""Load raw preference records: Hugging Face `datasets` (hub names or local files) and JSONL files."""

import bz2
import glob
import gzip
import json
import lzma
import os
import zlib

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


_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_READ_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, UnicodeDecodeError)


def _data_files(dataset_cfg) -> list[str]:
    files = dataset_cfg.get("data_files") if isinstance(dataset_cfg, dict) else None
    if isinstance(files, dict):
        files = [path for value in files.values() for path in ([value] if isinstance(value, str) else value)]
    if isinstance(files, str):
        files = [files]
    return [str(path) for path in files or [] if os.path.isfile(str(path))]


def _first_bad_record(path: str) -> DataError | None:
    """Read a JSON-lines file line by line (decompressing as its name says) up to the first unreadable record.

    Used only once the fast reader has failed: its error positions restart with every block it reads,
    so the record index comes from here. Blank lines hold no record and are not counted.
    """
    name = path.lower()
    opener = next((open_ for suffix, open_ in _OPENERS.items() if name.endswith(suffix)), open)
    stem = name
    for suffix in _OPENERS:
        stem = stem.removesuffix(suffix)
    if not stem.endswith(".jsonl"):
        return None
    index = 0
    try:
        with opener(path, "rb") as file:
            for line in file:
                if not line.strip():
                    continue
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as error:
                    return DataError(path, index, "*", f"not valid UTF-8 (byte {error.start} of the line)")
                try:
                    json.loads(text)
                except json.JSONDecodeError as error:
                    return DataError(path, index, "*", f"not valid JSON: {error}")
                index += 1
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as error:
        return DataError(path, index, "*", f"the compressed file is truncated or corrupt ({error})")
    return None


def _located_error(dataset_cfg, error: BaseException) -> RmtrainError:
    """The unreadable record's file and true index where it can be found, else the reader's own message."""
    for path in _data_files(dataset_cfg):
        located = _first_bad_record(path)
        if located is not None:
            return located
    cause = error.__cause__ or error
    return RmtrainError(f"cannot read {describe_source(dataset_cfg)}: {type(cause).__name__}: {cause}")


def load_records(dataset_cfg, split: str = "train") -> datasets.Dataset:
    """Build the raw data set from its config (or take a built one); a DatasetDict gives `split`.

    Unreadable data (bad JSON, invalid UTF-8, a truncated compressed file) is a DataError naming the
    file and the record; a file without records (blank lines, `[]`) is one too.
    """
    try:
        dataset = build(dataset_cfg)
    except datasets.exceptions.DatasetGenerationError as error:
        raise _located_error(dataset_cfg, error) from None
    except FileNotFoundError as error:
        raise RmtrainError(f"data not found ({describe_source(dataset_cfg)}): {error}") from error
    except _READ_ERRORS as error:
        raise _located_error(dataset_cfg, error) from None
    except ValueError as error:
        if "corresponds to no data" not in str(error):  # datasets' words for a file without records
            raise
        raise DataError(describe_source(dataset_cfg), 0, "*", "the data set is empty: no records in it") from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ConfigError(f"the dataset has no '{split}' split (it has {', '.join(dataset)})")
        dataset = dataset[split]
    if not isinstance(dataset, datasets.Dataset):
        dataset = datasets.Dataset.from_list(list(dataset))
    _check_text(dataset, dataset_cfg)
    return dataset


def _check_text(dataset: datasets.Dataset, dataset_cfg) -> None:
    """Arrow's JSON reader keeps invalid UTF-8 bytes in text columns; they would fail only when first read."""
    import pyarrow

    try:
        dataset.data.table.validate(full=True)
    except pyarrow.ArrowInvalid as error:
        raise _located_error(dataset_cfg, error) from None

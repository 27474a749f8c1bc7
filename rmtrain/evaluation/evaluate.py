"""`rmtrain eval`: a reward model's accuracy on a file of preference pairs, overall and per subset.

Read top to bottom: find the data file's loader, settle the tokenizer side of the model, build the
pairs exactly as training does (`build_preference_dataset`: map function, template, truncation,
reward token), load the weights, score every pair with the shared rule in padded batches, then
compute the metrics and write the report.
"""

import os

import datasets
import torch

from rmtrain.data.loading import load_records
from rmtrain.data.map_fns import AUTO_MAP_FN
from rmtrain.data.preference_dataset import PreferenceDataset, build_preference_dataset
from rmtrain.engine.precision import autocast_context
from rmtrain.errors import ConfigError, DataError, RmtrainError
from rmtrain.evaluation.models import RewardModelSource, default_device_and_dtype
from rmtrain.evaluation.report import write_pair_rows, write_summary
from rmtrain.metrics import preference_metrics
from rmtrain.normalization import measure_normalization, require_normalization, write_normalization
from rmtrain.progress import progress
from rmtrain.scoring import length_sorted_batches, score_batch

CLI_OPTION_NAMES = {"skip_bad_records": "--skip-bad-records", "dataset_map_fn": "--map-fn"}
SUBSET_FIELDS = ("subset", "category", "source")  # the first one a record set has labels the per-subset table
DATA_LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


def data_file_config(path: str) -> dict:
    """`dict(type=datasets.load_dataset, ...)` for one data file, the loader picked by its extension."""
    if not os.path.isfile(path):
        raise RmtrainError(f"data file not found: {path}")
    if os.path.getsize(path) == 0:
        raise DataError(path, 0, "*", "the file is empty")
    name = path.lower()
    for compression in COMPRESSIONS:
        name = name.removesuffix(compression)
    loader = DATA_LOADERS.get(os.path.splitext(name)[1])
    if loader is None:
        raise ConfigError(
            f"{path}: give a .jsonl, .json, .parquet or .csv file (optionally compressed, e.g. .jsonl.gz)"
        )
    return {"type": datasets.load_dataset, "path": loader, "data_files": path, "split": "train"}


def load_raw_records(data_cfg: dict) -> datasets.Dataset:
    """The file's records as they are (for their subset labels); a file without records is a DataError."""
    try:
        return load_records(data_cfg)
    except RmtrainError:
        raise
    except ValueError as error:  # datasets: 'Instruction "train" corresponds to no data!' for e.g. `[]`
        raise DataError(data_cfg["data_files"], 0, "*", f"the data set is empty ({error})") from error


def subset_labels(records: datasets.Dataset, record_indices: list[int]) -> tuple[str | None, list[str] | None]:
    """(field, label of each pair) from the raw records' `subset`, `category` or `source` field; (None, None) without one."""
    field = next((name for name in SUBSET_FIELDS if name in records.column_names), None)
    if field is None:
        return None, None
    values = list(records[field])
    return field, ["(none)" if values[i] is None else str(values[i]) for i in record_indices]


def score_pairs(
    trunk, value_head, pairs: PreferenceDataset, batch_size: int, pad_token_id: int, device
) -> tuple[list, list]:
    """(chosen scores, rejected scores) of every pair, in the data set's order.

    Each batch holds the chosen and the rejected sides of `batch_size` pairs, right-padded; the
    scores do not depend on the batch size or the padding (the rule reads the last real token).
    The forward passes run under autocast in the weights' dtype, as validation in training does.
    """
    chosen_ids, rejected_ids = list(pairs.pairs["chosen_ids"]), list(pairs.pairs["rejected_ids"])
    lengths = [max(len(c), len(r)) for c, r in zip(chosen_ids, rejected_ids)]
    chosen, rejected = [0.0] * len(lengths), [0.0] * len(lengths)
    batches = length_sorted_batches(lengths, batch_size)
    precision = autocast_context(torch.device(device).type, next(trunk.parameters()).dtype)
    for batch in progress(batches, desc=f"score {len(lengths)} pairs in batches of {batch_size}"):
        sequences = [chosen_ids[i] for i in batch] + [rejected_ids[i] for i in batch]
        with precision:
            scores = score_batch(trunk, value_head, sequences, pad_token_id, device)
        for row, index in enumerate(batch):
            chosen[index], rejected[index] = scores[row], scores[len(batch) + row]
    return chosen, rejected


def pair_rows(record_indices, chosen, rejected, subsets) -> list[dict]:
    """One dict per pair for the --out file."""
    return [
        {
            "record_index": index,
            "chosen_score": c,
            "rejected_score": r,
            "margin": c - r,
            "correct": c > r,  # a tie counts as wrong, as in the metrics
            "subset": subsets[position] if subsets is not None else None,
        }
        for position, (index, c, r) in enumerate(zip(record_indices, chosen, rejected))
    ]


def evaluate_reward_model(
    model: str,
    data: str,
    config: str | None = None,
    map_fn: str | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    out: str | None = None,
    chat_template: str | None = None,
    skip_bad_records: bool = False,
    normalize: bool = False,
    write_stats: bool = False,
    trust_remote_code: bool = False,
    trust_checkpoint: bool = False,
) -> dict:
    """Score every pair of `data` with `model` and return the summary (see `preference_metrics` for its metrics).

    `model`: a folder from `rmtrain convert pth_to_hf`, or a training checkpoint with its `config`.
    `map_fn`: how to read the records (default: found from the first records' shape). `max_length`: default the
    training one (see `RewardModelSource`). `out`: write one JSON line per pair there and the
    summary to `report.summary_path(out)`. `chat_template`: override the model's template.
    `skip_bad_records`: drop (and count) records the map function cannot read instead of stopping.
    `normalize`: report `(score - mean) / std` with the statistics in the folder's config.json.
    `write_stats`: measure those statistics on `data` (raw scores) and write them into the folder.
    `trust_remote_code`: let a folder's own Python run; `trust_checkpoint`: unpickle a checkpoint in full.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    data_cfg = data_file_config(data)
    records = load_raw_records(data_cfg)  # a missing or unreadable file fails before any model is loaded
    source = RewardModelSource(model, config, trust_remote_code, trust_checkpoint)
    if (normalize or write_stats) and source.is_checkpoint:
        flag = "--normalize" if normalize else "--write-stats"
        raise ConfigError(f"{flag} needs a folder from `rmtrain convert pth_to_hf`; {model} is a training checkpoint")
    normalization = require_normalization(model) if normalize and not write_stats else None
    encoding = source.encoding(max_length)
    max_length_from = "--max-length" if max_length else encoding.max_length_from
    max_length = max_length or encoding.max_length
    # The same builder as training: records that training would refuse are refused here, by file, record and field.
    pairs = build_preference_dataset(
        dataset=data_cfg,
        tokenizer=encoding.tokenizer,
        max_length=max_length,
        # without --map-fn the format is found from the first records (reference data: rmtrain's own format)
        dataset_map_fn=map_fn or (None if encoding.max_response_length is not None else AUTO_MAP_FN),
        is_dpo=False,
        is_reward=True,
        reward_token_id=encoding.reward_token_id,
        chat_template=chat_template or encoding.chat_template,
        skip_bad_records=skip_bad_records,
        # a reference-conditioned (POLAR) model scores each response against the record's `reference`
        is_reference=encoding.max_response_length is not None,
        max_response_length=encoding.max_response_length,
        option_names=CLI_OPTION_NAMES,
    )
    record_indices = list(pairs.pairs["record_index"])
    subset_field, subsets = subset_labels(records, record_indices)

    device, dtype = default_device_and_dtype()
    trunk, value_head, model_class = source.score_modules(device, dtype)
    pad_token_id = encoding.tokenizer.pad_token_id if encoding.tokenizer.pad_token_id is not None else 0
    chosen, rejected = score_pairs(trunk, value_head, pairs, batch_size, pad_token_id, device)
    stats_written = None
    if write_stats:
        stats = measure_normalization(chosen + rejected)
        write_normalization(model, stats, f"the {len(chosen)} pairs of {data}")
        stats_written = stats.as_dict()
        normalization = stats if normalize else None
    if normalization is not None:
        chosen, rejected = normalization.apply(chosen), normalization.apply(rejected)

    summary = {
        "model": model,
        "model_class": model_class,
        "data": data,
        "max_length": max_length,
        "max_length_from": max_length_from,
        "map_fn": pairs.summary["map_fn"],
        "dropped_records": pairs.summary["dropped_pairs"],
        "truncation": {
            key: pairs.summary[key] for key in ("prompt_cut_pairs", "chosen_cut_pairs", "rejected_cut_pairs")
        },
        "batch_size": batch_size,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "subset_field": subset_field,
        "normalization": normalization.as_dict() if normalization is not None else None,
        "stats_written": stats_written,
        **preference_metrics(chosen, rejected, subsets),
        "out": out,
    }
    if out:
        write_pair_rows(out, pair_rows(record_indices, chosen, rejected, subsets))
        write_summary(out, summary)
    return summary

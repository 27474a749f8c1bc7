"""Turn raw preference records into tokenised (chosen, rejected) pairs ready for the collate function.

Flow: load records -> map function (record -> prompt/chosen/rejected messages, checked) ->
`encode_conversation` for each side (template, truncation, reward token) -> PreferenceDataset.
Every unusable record stops the build with an error naming the file, the record and the field.
A pair whose chosen and rejected sides tokenise identically carries no preference (its loss has
zero gradient): such pairs are counted and dropped with a warning, and a data set of only such
pairs is an error.
"""

import logging
import os

import datasets
from mmengine.logging import print_log

from rmtrain.builder import build
from rmtrain.data.loading import describe_source, load_records
from rmtrain.data.map_fns import (
    AUTO_MAP_FN,
    DETECT_RECORDS,
    detect_record_format,
    messages_preference_map_fn,
    reference_preference_map_fn,
    resolve_map_fn,
)
from rmtrain.data.packing import PackedPreferenceDataset
from rmtrain.data.split import SPLITS, split_record_indices
from rmtrain.errors import ConfigError, DataError, RecordFieldError
from rmtrain.progress import datasets_progress
from rmtrain.scoring import (
    check_reward_token,
    encode_conversation,
    encode_reference_sequence,
    resolve_chat_template,
    reward_token_or_none,
)

# What a user types to set an option where they are: the config keys here; CLI verbs pass their flags.
CONFIG_OPTION_NAMES = {"skip_bad_records": "skip_bad_records=True", "dataset_map_fn": "dataset_map_fn"}


class _MapRecord:
    """Applies the config's map function and the format check; adds the file and record to errors.

    With `skip_bad_records`, an unusable record becomes a row whose `error` says why; the builder
    drops those rows and reports them. `record_indices`: the file index of each record when only
    part of the file is mapped (a train/val split), so errors and `record_index` name the file's record.
    """

    def __init__(
        self,
        map_fn,
        source: str,
        skip_bad_records: bool,
        record_indices: list[int] | None = None,
        is_reference: bool = False,
        option_names: dict | None = None,
    ):
        self.map_fn = map_fn
        self.option_names = option_names or CONFIG_OPTION_NAMES
        self.is_reference = is_reference
        self.check = reference_preference_map_fn if is_reference else messages_preference_map_fn
        self.source = source
        self.skip_bad_records = skip_bad_records
        self.record_indices = record_indices

    def __call__(self, record: dict, position: int) -> dict:
        index = position if self.record_indices is None else self.record_indices[position]
        try:
            try:
                mapped = self._apply_map_fn(record)
                # The check also normalises plain-string prompts/responses into message lists.
                checked = self.check(mapped)
            except RecordFieldError as error:
                raise DataError(self.source, index, error.field, error.message) from None
            except KeyError as error:
                raise DataError(self.source, index, str(error.args[0]), "missing") from None
        except DataError as error:
            if not self.skip_bad_records:
                names = self.option_names
                other_format = (
                    f"; records in another format need a map function ({names['dataset_map_fn']})"
                    if self.map_fn is None
                    else ""
                )
                raise DataError(
                    error.source,
                    error.index,
                    error.field,
                    f"{error.message} ({names['skip_bad_records']} drops such records{other_format})",
                ) from None
            return self._row(
                {"prompt": [], "chosen": [], "rejected": [], "reference": [], "wrapper": "sft"}, index, str(error)
            )
        return self._row(checked, index, None)

    def _row(self, checked: dict, index: int, error: str | None) -> dict:
        margin = checked.get("margin")
        row = {
            "prompt": checked["prompt"],
            "chosen": checked["chosen"],
            "rejected": checked["rejected"],
            "margin": None if margin is None else float(margin),
            "record_index": index,
            "error": error,
        }
        if self.is_reference:  # the same columns in every row of a build
            row["reference"] = checked["reference"]
            row["wrapper"] = checked["wrapper"]
        return row

    def _apply_map_fn(self, record: dict) -> dict:
        if self.map_fn is None:
            return record
        try:
            mapped = self.map_fn(record)
        except (RecordFieldError, KeyError):
            raise
        except Exception as error:  # not a map function at all, or one that breaks on this record
            name = getattr(self.map_fn, "__qualname__", repr(self.map_fn))
            raise RecordFieldError("*", f"the map function {name} failed: {type(error).__name__}: {error}") from None
        if not isinstance(mapped, dict):
            name = getattr(self.map_fn, "__qualname__", repr(self.map_fn))
            raise RecordFieldError(
                "*", f"the map function {name} returned a {type(mapped).__name__}, not a record dict"
            )
        return mapped


class _EncodePair:
    """Both sides of a record -> ids and cut counts: the chat rule, or the reference rule (POLAR) when
    `max_response_length` is given (`rmtrain.scoring`)."""

    def __init__(
        self,
        tokenizer,
        max_length: int,
        reward_token_id: int | None,
        chat_template: str | None,
        max_response_length: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.reward_token_id = reward_token_id
        self.chat_template = chat_template
        self.max_response_length = max_response_length

    def __call__(self, record: dict) -> dict:
        out = {}
        for side in ("chosen", "rejected"):
            if self.max_response_length is not None:
                encoded = encode_reference_sequence(
                    self.tokenizer,
                    record["prompt"],
                    record["reference"],
                    record[side],
                    self.max_length,
                    self.reward_token_id,
                    self.max_response_length,
                    record["wrapper"],
                )
                out[f"{side}_ids"] = encoded.input_ids
                out[f"{side}_prompt_cut"] = encoded.prompt_tokens_cut
                out[f"{side}_response_cut"] = encoded.response_tokens_cut
                out["reference_cut"] = max(out.get("reference_cut", 0), encoded.reference_tokens_cut)
                continue
            encoded = encode_conversation(
                self.tokenizer,
                record["prompt"],
                record[side],
                self.max_length,
                self.reward_token_id,
                self.chat_template,
            )
            out[f"{side}_ids"] = encoded.input_ids
            out[f"{side}_prompt_cut"] = encoded.prompt_tokens_cut
            out[f"{side}_response_cut"] = encoded.response_tokens_cut
        return out


class PreferenceDataset:
    """Tokenised pairs. Item: {'chosen_ids': list[int], 'rejected_ids': list[int], 'margin': float|None}.

    `pairs` also has a `record_index` column: the index in the source file of each pair's record
    (evaluation reports it and reads per-record fields such as `subset` with it).
    """

    def __init__(self, pairs: datasets.Dataset, summary: dict):
        self.pairs = pairs
        self.summary = summary

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        row = self.pairs[index]
        return {"chosen_ids": row["chosen_ids"], "rejected_ids": row["rejected_ids"], "margin": row["margin"]}

    def in_memory(self) -> "PreferenceDataset":
        """The same pairs held in memory, so the data set can be sent to other processes and nodes."""
        return PreferenceDataset(self.pairs.flatten_indices(keep_in_memory=True), self.summary)

    def __deepcopy__(self, memo):
        # Built once and never changed: mmengine deep-copies dataloader configs, share instead.
        return self

    @property
    def metainfo(self) -> dict:
        # mmengine's ValLoop hands this to the validation metric: the number of pairs to keep
        # once the distributed sampler's repeated ones are dropped (see RewardMetric.evaluate).
        return {"pairs": len(self)}

    def summary_text(self) -> str:
        s = self.summary
        part = f" ({s['part']})" if s.get("part") else ""
        reference = f", reference cut in {s['reference_cut_pairs']}" if "reference_cut_pairs" in s else ""
        return (
            f"preference data from {s['source']}{part}: {s['pairs']} pairs, {s['tokens']} tokens "
            f"(max_length {s['max_length']}); prompt cut from the left in {s['prompt_cut_pairs']} pairs, "
            f"chosen response cut in {s['chosen_cut_pairs']}, rejected response cut in "
            f"{s['rejected_cut_pairs']}{reference}; {s['dropped_pairs']} dropped"
            + (f" ({s['identical_pairs']} with chosen identical to rejected)" if s.get("identical_pairs") else "")
        )


def _keep_part(records: datasets.Dataset, val_split, split_seed: int, split: str):
    """(records of the `split` part, their file indices or None for all, a description or None)."""
    if not val_split:
        return records, None, None
    indices = split_record_indices(len(records), val_split, split_seed)[split]
    description = (
        f"{split} part: {len(indices)} of {len(records)} records, val_split={val_split}, split_seed={split_seed}"
    )
    return records.select(indices), indices, description


def _drop_identical_pairs(encoded: datasets.Dataset, source: str) -> tuple[datasets.Dataset, int]:
    """(the pairs whose two sides differ, how many were dropped); DataError when no pair differs."""
    chosen, rejected = encoded["chosen_ids"], encoded["rejected_ids"]
    identical = [position for position, (c, r) in enumerate(zip(chosen, rejected)) if c == r]
    if not identical:
        return encoded, 0
    records = [encoded[position]["record_index"] for position in identical[:5]]
    if len(identical) == len(encoded):
        raise DataError(
            source,
            records[0],
            "rejected",
            f"identical to 'chosen' (after the chat template and truncation) in every one of the {len(encoded)} "
            "pairs: there is no preference to learn",
        )
    print_log(
        f"{source}: dropped {len(identical)} of {len(encoded)} pairs whose chosen and rejected are identical "
        f"(after the chat template and truncation; they carry no preference), records "
        f"{', '.join(map(str, records))}{' ...' if len(identical) > 5 else ''}",
        logger="current",
        level=logging.WARNING,
    )
    keep = sorted(set(range(len(encoded))) - set(identical))
    return encoded.select(keep), len(identical)


def build_preference_dataset(
    dataset,
    tokenizer,
    max_length: int,
    dataset_map_fn=None,
    is_dpo: bool = True,
    is_reward: bool = False,
    reward_token_id: int | None = None,
    num_proc: int | None = None,
    use_varlen_attn: bool = False,
    max_packed_length: int = 16384,
    shuffle_before_pack: bool = True,  # accepted for XTuner configs; packing always shuffles, seeded by pack_seed
    pack_seed: int = 0,
    max_response_length: int | None = None,  # used by reference-based (POLAR) data only
    is_reference: bool = False,
    chat_template: str | None = None,
    skip_bad_records: bool = False,
    val_split: float = 0,
    split_seed: int = 0,
    split: str = "train",
    option_names: dict | None = None,
) -> PreferenceDataset:
    """Build tokenised preference pairs for reward-model training.

    `dataset`: a config dict (e.g. `dict(type=load_dataset, path=..., data_files=...)`) or a built
    `datasets.Dataset`/`DatasetDict`. `tokenizer`: a config dict or a tokenizer. `dataset_map_fn`:
    a registered name, a dotted path or a callable (None: records are already in the project's
    format). `max_length` counts the reward token. `chat_template`: a named template or Jinja text
    that overrides the tokenizer's. `skip_bad_records`: drop (and count) records the map function
    rejects instead of stopping with an error. `val_split` (a share in (0, 1) or a record count)
    holds records out for validation, chosen by a permutation seeded with `split_seed`; `split`
    ('train' or 'val') says which part to keep (see `rmtrain.data.split`). `dataset_map_fn="auto"`:
    the map function is found from the first records' shape (`detect_record_format`) and logged.
    `option_names`: what the user types for `skip_bad_records` and `dataset_map_fn` in error hints
    (default the config keys; CLI verbs give their flags).
    """
    option_names = option_names or CONFIG_OPTION_NAMES
    if is_dpo or not is_reward:
        raise ConfigError("rmtrain trains reward models: set is_dpo=False, is_reward=True in the dataset config")
    if is_reference:
        if not isinstance(max_response_length, int) or isinstance(max_response_length, bool) or max_response_length < 1:
            raise ConfigError(
                f"is_reference=True needs max_response_length, the tokens kept of the reference and of each "
                f"response (a positive integer), got {max_response_length!r}"
            )
    else:
        max_response_length = None  # the chat rule cuts by its own budget
    if max_length < 8:
        raise ConfigError(f"max_length={max_length} is too small to hold a prompt and a response")
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "val" and not val_split:
        raise ConfigError("split='val' needs val_split: the share (0 < val_split < 1) or count of records to hold out")

    reward_token_id = reward_token_or_none(reward_token_id)  # XTuner configs write -1 for none
    tokenizer = build(tokenizer)
    check_reward_token(tokenizer, reward_token_id)
    template = None if is_reference else resolve_chat_template(tokenizer, chat_template)  # reference data: no template
    source = describe_source(dataset)
    num_proc = min(num_proc or 8, os.cpu_count() or 1)  # more processes than cores only adds start-up time

    records = load_records(dataset)
    if len(records) == 0:
        raise DataError(source, 0, "*", "the data set is empty")
    records, record_indices, part = _keep_part(records, val_split, split_seed, split)
    map_fn_name = dataset_map_fn if isinstance(dataset_map_fn, str) else getattr(dataset_map_fn, "__name__", None)
    if dataset_map_fn == AUTO_MAP_FN:
        first = records.select(range(min(DETECT_RECORDS, len(records)))).to_list()
        map_fn_name, shape = detect_record_format(first, source, option_names["dataset_map_fn"])
        dataset_map_fn = map_fn_name
        print_log(f"{source}: the records look like {shape}; reading them with {map_fn_name}", logger="current")
    num_proc = max(1, min(num_proc, len(records) // 64 or 1))
    with datasets_progress("map records", len(records)):  # bars on a terminal, plain lines in log files
        mapped = records.map(
            _MapRecord(
                resolve_map_fn(dataset_map_fn), source, skip_bad_records, record_indices, is_reference, option_names
            ),
            with_indices=True,
            remove_columns=records.column_names,
            num_proc=num_proc if num_proc > 1 else None,
            load_from_cache_file=False,  # the cache key ignores edits to a map function's code
            desc="map records",
        )
    errors = [error for error in mapped["error"] if error is not None]
    for error in errors[:5]:
        print_log(f"dropped: {error}", logger="current", level=logging.WARNING)
    if errors:
        with datasets_progress("drop bad records", len(mapped)):
            mapped = mapped.filter(lambda error: error is None, input_columns="error")
    if len(mapped) == 0:
        raise DataError(source, 0, "*", "no usable record left after dropping bad ones")
    mapped = mapped.remove_columns("error")
    with datasets_progress("tokenize pairs", len(mapped)):
        encoded = mapped.map(
            _EncodePair(tokenizer, max_length, reward_token_id, template, max_response_length),
            remove_columns=[
                name for name in ("prompt", "chosen", "rejected", "reference", "wrapper") if name in mapped.column_names
            ],
            num_proc=num_proc if num_proc > 1 else None,
            load_from_cache_file=False,
            desc="tokenize pairs",
        )
    encoded, identical = _drop_identical_pairs(encoded, source)
    counts = encoded.select_columns(
        ["chosen_prompt_cut", "rejected_prompt_cut", "chosen_response_cut", "rejected_response_cut"]
    ).to_dict()
    summary = {
        "source": source,
        "part": part,
        "pairs": len(encoded),
        "tokens": sum(len(ids) for ids in encoded["chosen_ids"]) + sum(len(ids) for ids in encoded["rejected_ids"]),
        "max_length": max_length,
        "prompt_cut_pairs": sum(
            1 for c, r in zip(counts["chosen_prompt_cut"], counts["rejected_prompt_cut"]) if c or r
        ),
        "chosen_cut_pairs": sum(1 for n in counts["chosen_response_cut"] if n),
        "rejected_cut_pairs": sum(1 for n in counts["rejected_response_cut"] if n),
        "dropped_pairs": len(errors) + identical,  # truncation keeps every pair; unusable and identical ones drop
        "identical_pairs": identical,
        "map_fn": map_fn_name,
    }
    if is_reference:
        summary["reference_cut_pairs"] = sum(1 for n in encoded["reference_cut"] if n)
        summary["max_response_length"] = max_response_length
    dataset_out = PreferenceDataset(
        encoded.select_columns(["chosen_ids", "rejected_ids", "margin", "record_index"]), summary
    )
    if use_varlen_attn:
        dataset_out = PackedPreferenceDataset(dataset_out, max_packed_length, seed=pack_seed)
    print_log(dataset_out.summary_text(), logger="current")
    return dataset_out


def largest_token_id(dataset) -> int:
    """The largest token id in a (packed) preference data set's pairs; -1 without any."""
    import pyarrow.compute as pc

    pairs = dataset.pairs.pairs if isinstance(dataset.pairs, PreferenceDataset) else dataset.pairs
    table = pairs.data.table
    largest = -1
    for column in ("chosen_ids", "rejected_ids"):
        value = pc.max(pc.list_flatten(table.column(column))).as_py()
        if value is not None:
            largest = max(largest, value)
    return largest

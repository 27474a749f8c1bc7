"""`rmtrain check-data`: build a config's data exactly as training does and describe it; no model is loaded.

Answers the questions to settle before a long run: how many records survived, how many were cut
by max_length, how long pairs are, how much of a batch is padding (or how full packed bins are),
and what one pair looks like as token ids decoded back to text, reward token included.
"""

import logging
import math
from contextlib import contextmanager

import torch

from rmtrain.builder import build
from rmtrain.config import load_config, scoring_inputs
from rmtrain.data.packing import (
    PACKING_PAYS_FROM_PADDING,
    LengthGroupedSampler,
    PackedPreferenceDataset,
    favoured_batching,
    padded_fraction,
    pair_lengths,
)

PERCENTILES = (50, 90, 99)


def percentile(values: list[int], p: float) -> int:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def length_table(lengths: list[tuple[int, int]]) -> list[str]:
    """Token-length percentiles of chosen, rejected and whole pairs, one row each."""
    columns = [f"p{p}" for p in PERCENTILES] + ["max"]
    rows = [f"  {'tokens':<12}" + "".join(f"{c:>8}" for c in columns)]
    for name, values in (
        ("chosen", [c for c, _ in lengths]),
        ("rejected", [r for _, r in lengths]),
        ("pair total", [c + r for c, r in lengths]),
    ):
        cells = [percentile(values, p) for p in PERCENTILES] + [max(values)]
        rows.append(f"  {name:<12}" + "".join(f"{cell:>8}" for cell in cells))
    return rows


def _chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[start : start + size] for start in range(0, len(order), size)]


@contextmanager
def _quiet_current_logger():
    """LengthGroupedSampler logs the same padding figures when built; the report shows them once."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def batch_padding(pairs, batch_size: int, seed: int) -> tuple[float, float]:
    """Share of padded token slots with random batches (DefaultSampler) and with LengthGroupedSampler.

    One process: batches of `batch_size` pairs, shuffled with `seed` as training shuffles them.
    """
    lengths = pair_lengths(pairs)
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    with _quiet_current_logger():
        grouped = list(LengthGroupedSampler(pairs, batch_size=batch_size, shuffle=True, seed=seed))
    return padded_fraction(lengths, _chunks(order, batch_size)), padded_fraction(lengths, _chunks(grouped, batch_size))


def count_lines(summary: dict) -> list[str]:
    kept, dropped = summary.get("pairs", 0), summary.get("dropped_pairs", 0)
    return [
        f"  records read  {kept + dropped}",
        f"  pairs kept    {kept}",
        f"  dropped       {dropped}" + ("  (unusable records; the log above names the first ones)" if dropped else ""),
    ]


def truncation_line(summary: dict) -> str:
    return (
        f"  truncated     prompt cut from the left in {summary.get('prompt_cut_pairs', 0)} pairs, "
        f"chosen response cut in {summary.get('chosen_cut_pairs', 0)}, "
        f"rejected response cut in {summary.get('rejected_cut_pairs', 0)} (max_length {summary.get('max_length')})"
    )


def batching_lines(dataset, dataloader_cfg: dict, seed: int) -> list[str]:
    """Packed: bins and pairs per bin. Padded: padding share of random vs length-grouped batches.
    Both: which mode the data favours (`rmtrain.data.packing.favoured_batching`)."""
    if isinstance(dataset, PackedPreferenceDataset):
        per_bin = [len(pairs) for pairs in dataset.bins]
        lengths = pair_lengths(dataset.pairs)
        fill = [sum(sum(lengths[i]) for i in pairs) / dataset.max_packed_length for pairs in dataset.bins]
        batch_size = max(1, round(sum(per_bin) / len(per_bin)))  # padded batches as large as the bins
        _, grouped_share = batch_padding(dataset.pairs, batch_size, seed)
        return [
            f"  packed        {len(dataset.bins)} bins of at most {dataset.max_packed_length} tokens, no padding",
            (
                f"  pairs/bin     min {min(per_bin)}, mean {sum(per_bin) / len(per_bin):.1f}, max {max(per_bin)}; "
                f"bins {sum(fill) / len(fill):.0%} full on average"
            ),
            favoured_line(grouped_share, batch_size, "packed"),
        ]
    batch_size = dataloader_cfg["batch_size"]
    random_share, grouped_share = batch_padding(dataset, batch_size, seed)
    sampler = (dataloader_cfg.get("sampler") or {}).get("type")
    sampler_name = getattr(sampler, "__name__", str(sampler).rsplit(".", 1)[-1])
    return [
        (
            f"  padding       batches of {batch_size} pairs (per process): {random_share:.1%} of token slots are "
            f"padding with random batches, {grouped_share:.1%} with LengthGroupedSampler "
            f"(this config: {sampler_name})"
        ),
        favoured_line(grouped_share, batch_size, "padded"),
    ]


def favoured_line(grouped_share: float, batch_size: int, configured: str) -> str:
    mode = favoured_batching(grouped_share)
    verdict = "as this config does" if mode == configured else f"this config trains {configured}"
    if mode == "packed":
        why = f"length-grouped batches of {batch_size} pairs would pad {grouped_share:.1%} of token slots"
        switch = "use_varlen_attn=True" if configured != mode else ""
    else:
        why = f"length-grouped batches of {batch_size} pairs pad only {grouped_share:.1%} of token slots"
        switch = "use_varlen_attn=False with LengthGroupedSampler" if configured != mode else ""
    return f"  favours       {mode}: {why} (packing pays from {PACKING_PAYS_FROM_PADDING:.0%}); {verdict}" + (
        f" (set {switch})" if switch else ""
    )


def render_ids(tokenizer, ids: list[int], reward_token_id: int | None) -> str:
    """Decode ids as the model sees them (special tokens kept), the reward token shown as ⟦token⟧."""
    if reward_token_id is None:
        return tokenizer.decode(ids, skip_special_tokens=False)
    marker = f"⟦{tokenizer.convert_ids_to_tokens(reward_token_id)}⟧"
    parts, current = [], []
    for token in ids:
        if token == reward_token_id:
            parts += [tokenizer.decode(current, skip_special_tokens=False), marker]
            current = []
        else:
            current.append(token)
    parts.append(tokenizer.decode(current, skip_special_tokens=False))
    return "".join(parts)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.split("\n"))


def pair_lines(tokenizer, pair: dict, reward_token_id: int | None) -> list[str]:
    mark = (
        f"⟦...⟧ marks the reward token, id {reward_token_id}"
        if reward_token_id is not None
        else "no reward token: the score is read at the last token"
    )
    lines = [f"first pair, decoded from its token ids ({mark}):"]
    for side in ("chosen", "rejected"):
        ids = pair[f"{side}_ids"]
        lines += [f"  {side} ({len(ids)} tokens):", _indent(render_ids(tokenizer, ids, reward_token_id))]
    return lines


def check_data(config: str, cfg_options: dict | None = None) -> str:
    """Build the train (and val) data of `config` as `rmtrain train` does; return the report text.

    Raises the build's own errors (DataError names the file, record and field).
    """
    cfg = load_config(config, cfg_options)
    dataset_cfg = cfg.train_dataloader.dataset
    tokenizer = build(dataset_cfg.tokenizer)  # built once: the data set tokenises with it, the report decodes with it
    # Building logs the data set summary and progress lines; the report below adds what they lack.
    dataset = build(dataset_cfg, tokenizer=tokenizer)
    pairs = dataset.pairs if isinstance(dataset, PackedPreferenceDataset) else dataset
    summary = dataset.summary
    seed = (cfg.get("randomness") or {}).get("seed") or 0

    lines = [f"train data from {summary.get('source', 'the config')}"]
    lines += count_lines(summary)
    lines.append(truncation_line(summary))
    lines += length_table(pair_lengths(pairs))
    lines += batching_lines(dataset, cfg.train_dataloader, seed)

    lines += pair_lines(tokenizer, pairs[0], scoring_inputs(cfg).reward_token_id)

    val_dataloader = cfg.get("val_dataloader")
    if val_dataloader and val_dataloader.get("dataset"):
        same_tokenizer = val_dataloader.dataset.get("tokenizer") == dataset_cfg.tokenizer
        val = build(val_dataloader.dataset, **({"tokenizer": tokenizer} if same_tokenizer else {}))
        val_summary = getattr(val, "summary", None) or {"pairs": len(val)}
        lines.append(f"val data from {val_summary.get('source', 'the config')}")
        lines += count_lines(val_summary)
    return "\n".join(lines)

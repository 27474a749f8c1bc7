"""Tables of the cached results: per seed, and paired differences against TRL (mean and spread over seeds)."""

from __future__ import annotations

import re
import statistics


def paired_differences(rmtrain: dict[int, float], trl: dict[int, float]) -> dict | None:
    """Per-seed rmtrain - TRL over the seeds both have: {'seeds', 'diffs', 'mean', 'sd', 'min', 'max'}."""
    seeds = sorted(set(rmtrain) & set(trl))
    if not seeds:
        return None
    diffs = [rmtrain[seed] - trl[seed] for seed in seeds]
    return {
        "seeds": seeds,
        "diffs": diffs,
        "mean": statistics.fmean(diffs),
        "sd": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        "min": min(diffs),
        "max": max(diffs),
    }


def _by_seed(results: list[dict], arm: str, variant: str | None, metric_set: str, metric: str) -> dict[int, float]:
    return {
        row["seed"]: row["metrics"][metric_set][metric]
        for row in results
        if row["arm"] == arm and (variant is None or variant in row["variants"]) and metric_set in row["metrics"]
    }


def _fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _grad(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def variant_lines(variants: list[str]) -> list[str]:
    """What each listed variant of the rmtrain arm changes (tools/quality/variants.py)."""
    from tools.quality.variants import VARIANTS

    return ["| variant | what it trains with |", "|---|---|"] + [
        f"| {name} | {VARIANTS[name][0]} |" for name in variants if name in VARIANTS
    ]


def suite_tables(results: list[dict], suite: str, variants: list[str]) -> list[str]:
    """Markdown lines: the per-seed table and the paired differences of each variant against TRL."""
    rows = [row for row in results if row["suite"] == suite]
    if not rows:
        return [f"(no results for the {suite} suite yet)"]
    sets = list(next(iter(rows))["metrics"])
    lines = [
        "| arm | variant | seed | "
        + " | ".join(f"{name} acc | {name} std" for name in sets)
        + " | s/step | train margin | last grad norm |",
        "|---|---|---|" + "---|---|" * len(sets) + "---|---|---|",
    ]
    ordered = sorted(rows, key=lambda r: (r["arm"] != "trl", r["variants"][0], r["seed"]))
    for row in ordered:
        cells = []
        for name in sets:
            metric = row["metrics"].get(name, {})
            cells += [_fmt(metric.get("accuracy")), _fmt(metric.get("score_std"), 2)]
        train = row["train"]
        lines.append(
            f"| {row['arm']} | {', '.join(row['variants'])} | {row['seed']} | "
            + " | ".join(cells)
            + f" | {_fmt(train.get('step_s'), 2)} | {_fmt(train.get('last_margin'), 2)} | {_grad(train.get('last_grad_norm'))} |"
        )
    lines += ["", *variant_lines(variants)]
    lines += ["", "Paired difference rmtrain - TRL in accuracy (same seed, same pairs, same order):", ""]
    lines += ["| variant | " + " | ".join(f"{name}: mean (sd) [min, max]" for name in sets) + " | seeds |",
              "|---|" + "---|" * len(sets) + "---|"]  # fmt: skip
    for variant in variants:
        cells, seeds = [], []
        for name in sets:
            diff = paired_differences(
                _by_seed(rows, "rmtrain", variant, name, "accuracy"), _by_seed(rows, "trl", None, name, "accuracy")
            )
            if diff is None:
                cells.append("-")
                continue
            seeds = diff["seeds"]
            mean = round(diff["mean"], 9) + 0.0  # a sum of differences that cancels prints as +0.000, not -0.000
            cells.append(f"{mean:+.3f} ({diff['sd']:.3f}) [{diff['min']:+.3f}, {diff['max']:+.3f}]")
        if seeds:
            lines.append(f"| {variant} | " + " | ".join(cells) + f" | {','.join(map(str, seeds))} |")
    return lines


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with the block between `<!-- quality:NAME start -->` and `<!-- quality:NAME end -->` set to `body`.

    A missing block is appended at the end; everything outside the markers is kept as it is.
    """
    start, end = f"<!-- quality:{name} start -->", f"<!-- quality:{name} end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _match: block, text, count=1)
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + block + "\n"

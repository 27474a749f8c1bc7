"""What `rmtrain eval` writes: per-pair JSON lines, a summary JSON file and a table for the terminal."""

import json
from pathlib import Path

from rmtrain.metrics import PERCENTILES


def summary_path(out: str) -> Path:
    """Where the summary goes beside the per-pair file: results.jsonl -> results.summary.json."""
    return Path(out).with_suffix(".summary.json")


def write_pair_rows(out: str, rows: list[dict]) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)


def write_summary(out: str, summary: dict) -> Path:
    path = summary_path(out)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def _subset_lines(summary: dict) -> list[str]:
    subsets = summary["subsets"]
    width = max([len("subset"), len("all"), *(len(name) for name in subsets)])
    lines = [f"{'subset':<{width}}  {'pairs':>7}  {'accuracy':>8}"]
    for name, row in subsets.items():
        lines.append(f"{name:<{width}}  {row['pairs']:>7}  {row['accuracy']:>8.4f}")
    lines.append(f"{'all':<{width}}  {summary['pairs']:>7}  {summary['accuracy']:>8.4f}")
    return lines


def _distribution_lines(summary: dict) -> list[str]:
    columns = ["mean", "std", *(f"p{q}" for q in PERCENTILES)]
    lines = [f"{'':<8}" + "".join(f"{name:>9}" for name in columns)]
    for label, key in (("scores", "scores"), ("margins", "margins")):
        lines.append(f"{label:<8}" + "".join(f"{summary[key][name]:>9.4f}" for name in columns))
    return lines


def _read_with(summary: dict) -> str:
    return f" read with {summary['map_fn']}" if summary.get("map_fn") else ""


def summary_table(summary: dict) -> str:
    """A readable report of `evaluate_reward_model`'s summary."""
    cut = summary["truncation"]
    lines = [
        f"model     {summary['model']} ({summary['model_class']}, {summary['dtype']} on {summary['device']})",
        (
            f"data      {summary['data']}: {summary['pairs']} pairs{_read_with(summary)}, max_length {summary['max_length']} "
            f"({summary['max_length_from']}); prompt cut in {cut['prompt_cut_pairs']} pairs, chosen response "
            f"in {cut['chosen_cut_pairs']}, rejected response in {cut['rejected_cut_pairs']}; "
            f"{summary.get('dropped_records', 0)} unreadable records dropped"
        ),
        f"accuracy  {summary['accuracy']:.4f} ({summary['correct']} of {summary['pairs']} pairs; a tie counts as wrong)",
        (
            f"means     chosen {summary['chosen_score_mean']:.4f}, rejected {summary['rejected_score_mean']:.4f}, "
            f"margin {summary['margin_mean']:.4f}"
        ),
        "",
    ]
    if summary.get("normalization"):
        norm = summary["normalization"]
        lines.insert(
            -1, f"scores    normalised: (score - {norm['mean']:.4g}) / {norm['std']:.4g} (config.json mean, std)"
        )
    if summary.get("stats_written"):
        stats = summary["stats_written"]
        lines.insert(
            -1,
            f"stats     mean {stats['mean']:.4g}, std {stats['std']:.4g} of the raw scores written to "
            f"{summary['model']}/config.json and README.md",
        )
    if summary["subsets"]:
        lines += [f"per '{summary['subset_field']}':", *_subset_lines(summary), ""]
    lines += _distribution_lines(summary)
    if summary.get("out"):
        lines += ["", f"per-pair scores: {summary['out']}; summary: {summary_path(summary['out'])}"]
    return "\n".join(lines)

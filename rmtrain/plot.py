"""`rmtrain plot`: a work dir's logged scalars -> one PNG of training curves.

mmengine writes `<work_dir>/<timestamp>/vis_data/scalars.json` once per run: one JSON object per
logged step. Training lines carry `lr`, `iter`, `loss`, `acc`, `chosen_score_mean`, ...; lines
written after a validation carry the evaluator's metrics, with a `val` prefix or (mmengine's
default) with no prefix and no `lr`/`iter`. A resumed run starts a new timestamp folder, so a
run's history is the newest folder plus the folders it resumed from.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rmtrain.errors import RmtrainError

SCALARS = Path("vis_data") / "scalars.json"
DEFAULT_PLOT_NAME = "training_curves.png"
# Keys every training line has and validation lines never have (a validation `loss` is possible).
TRAIN_MARKERS = ("lr", "iter", "train/lr", "train/iter")


@dataclass
class Curves:
    """Scalars by step: `train[step]` and `val[step]` are {metric name without prefix: value}."""

    train: dict[int, dict[str, float]] = field(default_factory=dict)
    val: dict[int, dict[str, float]] = field(default_factory=dict)
    runs: list[Path] = field(default_factory=list)  # scalars files read, oldest first

    def series(self, split: str, name: str) -> tuple[list[int], list[float]]:
        """Steps and values of one metric, in step order; missing and non-finite values skipped."""
        lines = self.train if split == "train" else self.val
        points = [(step, line[name]) for step, line in sorted(lines.items()) if _is_number(line.get(name))]
        return [step for step, _ in points], [value for _, value in points]

    def val_names(self) -> set[str]:
        return {name for line in self.val.values() for name in line}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _strip_prefix(key: str) -> str:
    for prefix in ("train/", "val/", "val_", "val."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def is_validation_line(line: dict) -> bool:
    if any(key.startswith("val") for key in line):
        return True
    return not any(key in line for key in TRAIN_MARKERS)


def find_run_scalars(work_dir: str | Path, run: str | None = None) -> list[Path]:
    """Scalars files of the newest run (or of timestamp folder `run`) and the runs it resumed, oldest first.

    A run is taken to resume the folder before it when it logs no step as early as the earliest
    first step of the work dir: a fresh start logs the same first step every time.
    `work_dir` may also be a timestamp folder itself.
    """
    work_dir = Path(work_dir)
    if (work_dir / SCALARS).is_file():
        return [work_dir / SCALARS]
    found = sorted(work_dir.glob(f"*/{SCALARS}"))  # timestamp names (YYYYmmdd_HHMMSS) sort by time
    first_steps = {path: _first_step(path) for path in found}
    found = [path for path in found if first_steps[path] is not None]  # runs that died before logging
    if not found:
        raise RmtrainError(
            f"no scalars in {work_dir}: expected <timestamp>/{SCALARS.as_posix()} with at least one line "
            "(`rmtrain train --work-dir` writes it every log_interval iterations)"
        )
    if run is not None:
        names = [path.parents[1].name for path in found]
        if run not in names:
            raise RmtrainError(f"--run {run}: no such run with scalars in {work_dir} (runs: {', '.join(names)})")
        found = found[: names.index(run) + 1]
    fresh_start = min(first_steps[path] for path in found)
    chain = [found.pop()]
    while found and first_steps[chain[-1]] > fresh_start:
        chain.append(found.pop())
    return chain[::-1]


def _read_lines(path: Path):
    with open(path) as file:
        for _number, text in enumerate(file, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                # The last line of a run killed while writing may be cut short; skip it, not the run.
                continue
            if isinstance(line, dict) and _is_number(line.get("step")):
                yield line


def _first_step(path: Path) -> int | None:
    return next((int(line["step"]) for line in _read_lines(path)), None)


def read_curves(paths: list[Path]) -> Curves:
    """Merge scalars files by step, later files winning (a resumed run repeats steps after its checkpoint)."""
    curves = Curves(runs=list(paths))
    for path in paths:
        for line in _read_lines(path):
            split = curves.val if is_validation_line(line) else curves.train
            values = {_strip_prefix(key): value for key, value in line.items() if key != "step"}
            split.setdefault(int(line["step"]), {}).update(values)
    return curves


def _val_key(curves: Curves, *names: str) -> str | None:
    """The validation metric whose last '/'-separated part is one of `names` (e.g. 'reward/accuracy')."""
    for name in names:
        for key in sorted(curves.val_names()):
            if key.rsplit("/", 1)[-1] == name:
                return key
    return None


def _plot_val(axes, curves: Curves, key: str | None, label: str, color: str) -> None:
    if key is None:
        return
    steps, values = curves.series("val", key)
    if steps:
        axes.plot(steps, values, "o--", color=color, markersize=5, label=label)


def draw_curves(curves: Curves, title: str):
    """A 2x2 matplotlib Figure: loss, accuracy, chosen/rejected mean scores and their gap, learning rate."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A Figure with its own Agg canvas: no pyplot state, no display needed (servers, CI).
    figure = Figure(figsize=(11, 7), dpi=90, layout="constrained")
    FigureCanvasAgg(figure)
    (loss_ax, acc_ax), (score_ax, lr_ax) = figure.subplots(2, 2, sharex=True)
    figure.suptitle(title)

    loss_ax.plot(*curves.series("train", "loss"), color="tab:blue", label="train")
    _plot_val(loss_ax, curves, _val_key(curves, "loss"), "validation", "tab:red")
    loss_ax.set_title("loss")

    acc_ax.plot(*curves.series("train", "acc"), color="tab:blue", label="train")
    _plot_val(acc_ax, curves, _val_key(curves, "accuracy", "acc"), "validation", "tab:red")
    acc_ax.axhline(0.5, color="gray", linewidth=0.8, linestyle=":", label="chance")
    acc_ax.set_ylim(0, 1.02)
    acc_ax.set_title("accuracy (chosen scored above rejected)")

    chosen = dict(zip(*curves.series("train", "chosen_score_mean")))
    rejected = dict(zip(*curves.series("train", "rejected_score_mean")))
    score_ax.plot(list(chosen), list(chosen.values()), color="tab:green", label="chosen")
    score_ax.plot(list(rejected), list(rejected.values()), color="tab:orange", label="rejected")
    gap_steps = [step for step in chosen if step in rejected]
    score_ax.plot(
        gap_steps, [chosen[s] - rejected[s] for s in gap_steps], color="tab:purple", linestyle="--", label="gap"
    )
    _plot_val(score_ax, curves, _val_key(curves, "chosen_score_mean"), "val chosen", "tab:green")
    _plot_val(score_ax, curves, _val_key(curves, "rejected_score_mean"), "val rejected", "tab:orange")
    _plot_val(score_ax, curves, _val_key(curves, "margin_mean", "gap"), "val gap", "tab:purple")
    score_ax.axhline(0, color="gray", linewidth=0.8)
    score_ax.set_title("mean score")

    lr_ax.plot(*curves.series("train", "lr"), color="tab:gray")
    lr_ax.set_title("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))

    for axes in (loss_ax, acc_ax, score_ax, lr_ax):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0] and axes is not lr_ax:
            axes.legend(fontsize="small")
    for axes in (score_ax, lr_ax):
        axes.set_xlabel("step")
    # Resumed runs: a thin line where each later run took over.
    for path in curves.runs[1:]:
        start = _first_step(path)
        for axes in (loss_ax, acc_ax, score_ax, lr_ax):
            axes.axvline(start, color="black", alpha=0.25, linewidth=0.8)
    return figure


def plot_training_curves(work_dir: str, out: str | None = None, run: str | None = None) -> Path:
    """Read the run's scalars (see `find_run_scalars`), draw them, save a PNG; returns its path."""
    curves = read_curves(find_run_scalars(work_dir, run))
    if not curves.train:
        raise RmtrainError(f"{curves.runs[-1]} has no training lines yet (only validation)")
    out_path = Path(out) if out else Path(work_dir) / DEFAULT_PLOT_NAME
    out_path.parent.mkdir(parents=True, exist_ok=True)
    title = f"{Path(work_dir).resolve().name}: run {curves.runs[-1].parents[1].name}"
    if len(curves.runs) > 1:
        resumed = ", ".join(str(_first_step(path)) for path in curves.runs[1:])
        title += f" (resumed at step {resumed}, thin lines)"
    figure = draw_curves(curves, title)
    figure.savefig(out_path, format="png")
    return out_path

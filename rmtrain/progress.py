"""Progress of long loops: a tqdm bar on a terminal, a few plain log lines everywhere else.

Bars redraw with carriage returns; in a log file (CI, nohup, Slurm's output file) each redraw
becomes another line, thousands per job. Off a terminal, progress is a line about every 10% or
every `every_seconds`, through mmengine's logger so it lands in the run's log like the rest.
"""

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


def is_interactive() -> bool:
    """THE terminal check: progress bars only when stderr (where tqdm draws) is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def _log(message: str, logger) -> None:
    # Imported here: `import rmtrain.progress` stays cheap.
    from mmengine.logging import print_log

    print_log(message, logger=logger, level=logging.INFO)


def progress(
    iterable: Iterable,
    total: int | None = None,
    desc: str = "progress",
    every_seconds: float = 30.0,
    logger="current",
) -> Iterator:
    """Yield the items of `iterable`, showing how far the loop got.

    `total`: the number of items (default: len(iterable) where it has one). `logger`: where plain
    lines go (mmengine's print_log target: "current", a logging.Logger, or None for print).
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if is_interactive():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc)
        return

    start = last_line = time.monotonic()
    next_tenth = 1  # whole tenths: summing 0.1 drifts (0.1 * 3 > 0.3)
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        reached = bool(total) and done * 10 >= next_tenth * total
        if (reached or now - last_line >= every_seconds) and done != total:
            of_total = f"/{total} ({done / total:.0%})" if total else ""
            _log(f"{desc}: {done}{of_total}, {now - start:.0f}s", logger)
            last_line = now
            if total:
                next_tenth = done * 10 // total + 1
    _log(f"{desc}: {done} done in {time.monotonic() - start:.1f}s", logger)


@contextmanager
def datasets_progress(desc: str, count: int, logger="current"):
    """Around a `datasets` call (`map`, `filter`): its own bars on a terminal, else two plain lines.

    `datasets` draws a tqdm bar per call (per process with num_proc); off a terminal they are
    switched off for the call and a line before and after says what ran.
    """
    if is_interactive():
        yield
        return
    import datasets.utils

    was_enabled = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    _log(f"{desc}: {count} records ...", logger)
    start = time.monotonic()
    try:
        yield
    finally:
        if was_enabled:
            datasets.utils.enable_progress_bars()
    _log(f"{desc}: {count} records done in {time.monotonic() - start:.1f}s", logger)

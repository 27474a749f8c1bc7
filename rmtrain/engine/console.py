"""What a training run prints on the console: what was built, progress, validation, checkpoints, the next command.

mmengine's log file stays complete (environment, config, hook order, every line); the console
handler of the run's logger gets a filter that leaves out the environment and config dumps, the
hook tables, mmengine's notices about its own internals (`rmtrain.compat`), and lines logged with
`extra={"console": False}` (already shown before the log file existed).
"""

import logging
import os

import torch

from rmtrain.compat import mmengine_deprecation_notice_starts
from rmtrain.engine.precision import bf16_supported

FILE_ONLY = {"console": False}  # logger.info(message, extra=FILE_ONLY): the log file only

_FILE_ONLY_STARTS = (
    "------------------------------------------------------------\nSystem environment",
    "Config:\n",
    "Hooks will be executed in the following order",
    "Distributed training is not used, all SyncBatchNorm",
    "Exp name:",
)


class ConsoleFilter(logging.Filter):
    def __init__(self):
        super().__init__()
        self.starts = _FILE_ONLY_STARTS + mmengine_deprecation_notice_starts()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "console", True) is False:
            return False
        return not str(record.msg).lstrip("\n").startswith(self.starts)


def quiet_console(logger: logging.Logger) -> logging.Logger:
    """Add the console filter to `logger`'s console handlers (not its file handlers); returns the logger."""
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if not any(isinstance(f, ConsoleFilter) for f in handler.filters):
                handler.addFilter(ConsoleFilter())
    return logger


class QuietConsoleMixin:
    """For mmengine Runner classes: the run's logger prints the console lines above, the file gets everything."""

    def build_logger(self, *args, **kwargs):
        return quiet_console(super().build_logger(*args, **kwargs))


def quiet_console_runner(runner_class: type) -> type:
    """`runner_class` with a quiet console (a subclass; Runner and FlexibleRunner alike)."""
    return type(f"QuietConsole{runner_class.__name__}", (QuietConsoleMixin, runner_class), {})


def built_line(runner, cfg, train_dataset, val_dataset, deepspeed: str | None) -> str:
    """One line: data, model, device, precision and batch mode of the run."""
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    trunk = type(getattr(model, "model", model)).__name__
    parameters = sum(p.numel() for p in model.parameters())
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = cfg.optim_wrapper.get("dtype", "float32")
    if deepspeed:
        precision = f"as DeepSpeed config {deepspeed} says"
    elif dtype == "bfloat16" or (dtype == "auto" and bf16_supported(device_type)):
        precision = "bf16 autocast, fp32 weights"
    else:
        precision = "fp32"
    summary = train_dataset.summary
    if "bins" in summary:
        mode = f"packed: {summary['bins']} bins of at most {summary['max_packed_length']} tokens"
    else:
        mode = f"padded batches of {runner.train_dataloader.batch_size} pairs"
    val = f", {val_dataset.summary['pairs']} validation pairs" if val_dataset is not None else ""
    return (
        f"built: data {summary['pairs']} training pairs{val}; model RewardModel on {trunk} "
        f"({parameters / 1e6:.1f}M parameters); device {device_type}; precision {precision}; {mode}"
    )


def finished_lines(config: str, work_dir: str) -> list[str]:
    """Where the checkpoints went and the one next command (export the last one)."""
    pointer = os.path.join(work_dir, "last_checkpoint")
    if not os.path.isfile(pointer):
        return [f"no checkpoint was written to {work_dir}"]
    with open(pointer) as handle:
        last = handle.read().strip()
    names = sorted(name for name in os.listdir(work_dir) if name.endswith(".pth"))
    name = os.path.splitext(os.path.basename(config))[0]
    return [
        f"checkpoints in {work_dir}: {', '.join(names)}",
        f"next: rmtrain convert pth_to_hf {config} {last} ./{name}_hf",
    ]

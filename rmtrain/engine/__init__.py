"""Training engine: the mmengine Runner set-up, launchers, hooks, precision and schedules.

The names below are imported when first used (PEP 562), not with the package: mmengine's runner
takes about 5 s to import, and `rmtrain train` imports `rmtrain.engine.launch` before it knows
whether this process trains (the torchrun parent only starts processes; a wrong argument fails at
once). Recipes keep `from rmtrain.engine import AutocastOptimWrapper, ...`.
"""

import importlib

_MODULE_OF = {
    "AutocastOptimWrapper": "rmtrain.engine.precision",
    "LinearWarmupLR": "rmtrain.engine.schedulers",
    "GradientAccumulationStateHook": "rmtrain.engine.hooks",
    "RewardLogProcessor": "rmtrain.engine.log_processor",
    "TrainLoop": "rmtrain.engine.loops",
    "ValLoop": "rmtrain.engine.loops",
}

__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

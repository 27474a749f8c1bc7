"""ZeroGradientStopHook: a run whose gradient norm is exactly 0 for 3 logging windows stops and says why."""

from types import SimpleNamespace

import pytest
from mmengine.hooks import LoggerHook
from mmengine.logging import MessageHub

from rmtrain.engine.hooks import ZeroGradientStopHook
from rmtrain.errors import TrainingError


def _run(norms: list[float], name: str, interval: int = 2) -> int:
    """Feed one norm per iteration; returns the iterations run before the hook stopped training (or all)."""
    hub = MessageHub.get_instance(name)
    runner = SimpleNamespace(message_hub=hub, hooks=[LoggerHook(interval=interval)], iter=0, work_dir="work")
    hook = ZeroGradientStopHook()
    hook.before_train(runner)
    for iteration, norm in enumerate(norms):
        runner.iter = iteration
        hub.update_scalar("train/grad_norm", norm)
        try:
            hook.after_train_iter(runner, iteration)
        except TrainingError as error:
            assert "gradient norm was exactly 0 in 3 consecutive logging windows" in str(error)
            return iteration + 1
    return len(norms)


def test_three_windows_of_exactly_zero_gradient_stop_training():
    assert _run([0.5, 0.4] + [0.0] * 10, "zero_grad_a") == 8  # windows ending at 4, 6 and 8


def test_a_single_nonzero_norm_resets_the_count():
    norms = [0.0] * 5 + [1e-12] + [0.0] * 4
    assert _run(norms, "zero_grad_b") == len(norms)


@pytest.mark.parametrize("norms", [[0.1] * 10, []])
def test_learning_runs_are_not_stopped(norms):
    assert _run(norms, f"zero_grad_c{len(norms)}") == len(norms)

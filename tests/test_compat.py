"""The library workarounds switch themselves off outside the versions that need them (rmtrain.compat)."""

import pytest
from packaging.version import Version

from rmtrain import compat


@pytest.mark.parametrize("workaround", compat.WORKAROUNDS, ids=lambda w: w.name)
def test_every_workaround_is_still_needed_by_the_installed_libraries(workaround):
    """Fails once a library is upgraded past a workaround's range: then delete that workaround."""
    installed = {library: str(compat.installed_version(library)) for library, _ in workaround.needs}
    assert workaround.needed(), (
        f"the installed libraries ({installed}) are outside the range of workaround {workaround.name!r} "
        f"({dict(workaround.needs)}): it is switched off; check the fix and delete it from rmtrain/compat.py"
    )


def test_a_workaround_switches_off_for_a_fixed_release(monkeypatch):
    fixed = {"mmengine": Version("0.10.8"), "deepspeed": Version("0.19.8"), "torch": Version("2.13.0")}
    monkeypatch.setattr(compat, "installed_version", lambda library: fixed.get(library))
    assert not compat.MMENGINE_FLEXIBLE_RUNNER_ITER.needed()
    assert not compat.MMENGINE_DEEPSPEED_ONEBIT.needed()
    assert compat.DEEPSPEED_COLLECTIVE_WARNINGS.needed()  # torch 2.13 with deepspeed 0.19.8: still needed
    from mmengine.runner import FlexibleRunner

    assert compat.flexible_runner_class() is FlexibleRunner
    assert compat.ddp_wrapper_config(on_gpu=False) == {"type": "MMDistributedDataParallel"}


def test_a_missing_library_needs_no_workaround(monkeypatch):
    monkeypatch.setattr(compat, "installed_version", lambda library: None)
    assert not any(workaround.needed() for workaround in compat.WORKAROUNDS)


def test_while_needed_the_workarounds_act():
    from mmengine.runner import FlexibleRunner

    assert compat.flexible_runner_class() is not FlexibleRunner
    assert issubclass(compat.flexible_runner_class(), FlexibleRunner)
    assert compat.ddp_wrapper_config(on_gpu=False) == {"type": "MMDistributedDataParallel", "device_ids": None}
    assert compat.ddp_wrapper_config(on_gpu=True) == {"type": "MMDistributedDataParallel"}

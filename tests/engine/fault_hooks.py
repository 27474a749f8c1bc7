"""A hook for tests: kills the whole process group (kill -9) while a checkpoint is being written."""

import os
import signal

from mmengine.hooks import Hook


class _KillWhenPickled:
    def __reduce__(self):
        # The whole job, as a scheduler's kill -9 does: torchrun starts each rank in a session of its own,
        # so under torchrun the launcher's group (the command and torchrun) goes first, then this rank's.
        if "TORCHELASTIC_RUN_ID" in os.environ:
            os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)
        os.killpg(os.getpgid(0), signal.SIGKILL)
        raise AssertionError("unreachable")


class KillDuringSaveHook(Hook):
    """SIGKILLs the process group in the middle of serialising the checkpoint of iteration `at`.

    The kill comes from inside torch.save, after the weights and optimizer state are serialised and
    before the file is complete: the moment at which mmengine's own CheckpointHook (max_keep_ckpts=1)
    has already deleted the previous checkpoint.
    """

    priority = "VERY_LOW"  # after every hook that adds to the checkpoint

    def __init__(self, at: int):
        self.at = at

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if checkpoint.get("meta", {}).get("iter") == self.at:
            checkpoint["zz_kill"] = _KillWhenPickled()

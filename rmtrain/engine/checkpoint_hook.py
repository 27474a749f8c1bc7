"""Saving checkpoints so that a kill at any moment loses at most the iterations since the last one.

`AtomicCheckpointHook` takes mmengine's CheckpointHook settings (interval, max_keep_ckpts, save_best,
...); `rmtrain train` puts it in place of CheckpointHook, so recipes and copied configs keep naming
CheckpointHook. What it changes is the order of a save:

1. the checkpoint is written as `iter_N.pth.tmp` (a file, or a DeepSpeed folder), in plain data only
   (`plain_message_hub`: loadable with torch's weights-only loader);
2. it is fsynced and renamed to `iter_N.pth`;
3. `last_checkpoint` is rewritten (temporary file, fsync, rename);
4. only then are checkpoints beyond max_keep_ckpts removed.

mmengine's own order removes the oldest checkpoint first and writes the new one in place: a kill
during the write of a run with max_keep_ckpts=1 leaves nothing to resume from.
"""

import os

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from rmtrain.checkpoints import (
    PARTIAL_SUFFIX,
    commit_checkpoint,
    plain_message_hub,
    remove_checkpoint,
    restore_message_hub,
    write_resume_pointer,
)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class AtomicCheckpointHook(CheckpointHook):
    """CheckpointHook whose saves are complete or absent, and which removes old checkpoints last."""

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if "message_hub" in checkpoint:
            checkpoint["message_hub"] = plain_message_hub(checkpoint["message_hub"])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if "message_hub" in checkpoint:
            checkpoint["message_hub"] = restore_message_hub(checkpoint["message_hub"])

    def _save_checkpoint_with_step(self, runner, step, meta):
        outdated = None
        # Called twice for one step when a new best validation score follows a periodic save.
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        final = os.path.join(self.out_dir, filename)
        partial = final + PARTIAL_SUFFIX
        self.last_ckpt = final
        runner.message_hub.update_info("last_ckpt", final)
        if is_main_process():
            remove_checkpoint(partial)  # left by a run killed while writing it
        _barrier()
        runner.save_checkpoint(
            self.out_dir,
            filename + PARTIAL_SUFFIX,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args,
        )
        _barrier()  # every rank's part of a DeepSpeed checkpoint is written
        if is_main_process():
            commit_checkpoint(partial, final)
            write_resume_pointer(runner.work_dir, final)
            if outdated is not None and outdated != step:
                remove_checkpoint(os.path.join(self.out_dir, self.filename_tmpl.format(outdated)))
        _barrier()

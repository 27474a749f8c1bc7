"""The hook the rmtrain arms' configs name: per-step wall times and token counts, read back by the parent."""

import json
import time
from pathlib import Path

import torch
from mmengine.hooks import Hook

from .measure import activation_checkpointing, token_digest


class BenchStepHook(Hook):
    """Records the wall time and the token counts of every optimizer step; after training, writes them with
    the settings the run actually used (read back from the runner) to `out_file`."""

    priority = "LOWEST"  # after the optimizer step, the scheduler and the logger of the iteration

    def __init__(self, out_file: str):
        self.out_file = out_file
        self.records: list[dict] = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        t = time.perf_counter()
        data = data_batch["data"]
        self.records.append(
            {
                "t": t,
                "real": int(data["num_tokens"]),
                "slots": int(data["input_ids"].numel()),
                "pairs": int(data["margin"].numel()),
            }
        )

    def after_train(self, runner):
        dataset = runner.train_dataloader.dataset
        summary = getattr(dataset, "summary", {})
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        wrapper = runner.optim_wrapper
        checks = {
            "autocast": "bf16" if wrapper.autocast_enabled("cpu") else "no",
            "grad_checkpointing": activation_checkpointing(model.model),
            "optimizer": type(wrapper.optimizer).__name__,
            "threads": torch.get_num_threads(),
            "attention": model.model.config._attn_implementation,
        }
        pairs = dataset.pairs  # PreferenceDataset, or PackedPreferenceDataset over one
        pairs = getattr(pairs, "pairs", pairs) if not hasattr(pairs, "column_names") else pairs
        digest = token_digest(pairs["chosen_ids"], pairs["rejected_ids"])
        out = {"records": self.records, "dataset_tokens": summary.get("tokens"), "dataset_pairs": summary.get("pairs"),
               "token_digest": digest, "checks": checks}  # fmt: skip
        Path(self.out_file).write_text(json.dumps(out))

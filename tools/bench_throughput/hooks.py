"""The hook the rmtrain arms' configs name: per-step wall times and token counts, read back by the parent."""

import json
import time
from pathlib import Path

import torch
from mmengine.hooks import Hook

from .measure import activation_checkpointing, token_digest
from .window import step_digest


def batch_sequences(data: dict) -> list[list[int]]:
    """The real token ids of a collated batch's sequences, in order (packed: split at the offsets)."""
    if "cu_seq_lens" in data:
        row, bounds = data["input_ids"][0].tolist(), data["cu_seq_lens"].tolist()
        return [row[start:end] for start, end in zip(bounds, bounds[1:])]
    return [ids[mask.bool()].tolist() for ids, mask in zip(data["input_ids"], data["attention_mask"])]


class BenchStepHook(Hook):
    """Records the wall time and the token counts of every optimizer step; after training, writes them with
    the settings the run actually used (read back from the runner) to `out_file`."""

    priority = "LOWEST"  # after the optimizer step, the scheduler and the logger of the iteration

    def __init__(self, out_file: str, profile_step: int | None = None):
        self.out_file = out_file
        self.records: list[dict] = []
        self.batches: list[dict] = []
        # With profile_step k: torch.profiler records optimizer step k whole (from the end of step k - 1,
        # so its data loading and collation too) and writes the top of its table beside out_file.
        self.profile_step = profile_step
        self.profiler = None

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        t = time.perf_counter()
        step = len(self.records) + 1
        if self.profiler is not None and step == self.profile_step:
            self.profiler.stop()
            table = self.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
            Path(self.out_file).with_name("profile.txt").write_text(table)
            self.profiler = None
        if self.profile_step is not None and step == self.profile_step - 1:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.start()
        data = data_batch["data"]
        self.records.append(
            {
                "t": t,
                "real": int(data["num_tokens"]),
                "slots": int(data["input_ids"].numel()),
                "pairs": int(data["margin"].numel()),
            }
        )
        self.batches.append(data)  # fingerprinted after training, outside the timed steps

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
        steps = [step_digest(batch_sequences(data)) for data in self.batches]
        out = {"records": self.records, "dataset_tokens": summary.get("tokens"), "dataset_pairs": summary.get("pairs"),
               "token_digest": digest, "step_digests": steps, "checks": checks}  # fmt: skip
        Path(self.out_file).write_text(json.dumps(out))

"""Measurements shared by the parent and the arms: step windows, peak memory, token fingerprints."""

import hashlib
import json
import resource


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def summarize_steps(records: list[dict], warmup: int, steps: int) -> dict:
    """Per-step records (t = wall time at the end of the optimizer step, real, slots, pairs) -> window metrics."""
    if len(records) < warmup + steps:
        raise RuntimeError(f"only {len(records)} optimizer steps recorded, {warmup + steps} needed")
    window = records[warmup : warmup + steps]
    elapsed = records[warmup + steps - 1]["t"] - records[warmup - 1]["t"]
    real = sum(r["real"] for r in window)
    slots = sum(r["slots"] for r in window)
    pairs = sum(r["pairs"] for r in window)
    step_times = [records[i]["t"] - records[i - 1]["t"] for i in range(warmup, warmup + steps)]
    return {
        "tokens_per_s": real / elapsed,
        "padded_fraction": 1 - real / slots if slots else 0.0,
        "mean_pairs_per_step": pairs / steps,
        "tokens_per_seq": real / (2 * pairs) if pairs else 0.0,
        "tokens_per_step": real / steps,
        "step_s": elapsed / steps,
        "step_s_median": sorted(step_times)[len(step_times) // 2],
        "step_s_min": min(step_times),
        "step_s_max": max(step_times),
        "window_s": elapsed,
        "step_times": step_times,
    }


def token_digest(chosen: list[list[int]], rejected: list[list[int]]) -> str:
    """A fingerprint of every pair's token ids, in order: arms that see identical sequences agree on it."""
    digest = hashlib.sha256()
    for c, r in zip(chosen, rejected):
        digest.update(json.dumps([c, r]).encode())
    return digest.hexdigest()[:16]


def activation_checkpointing(model) -> bool:
    """Whether a transformers model recomputes activations (the attribute was renamed in transformers 5)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name) or name in vars(model):
            return bool(getattr(model, name))
    return False


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

"""The throughput benchmark's rmtrain arms are real config files: they load with the shared inputs given as
cfg-options, and the packed arm differs from the padded one only where packing needs it. Every arm trains
the same window: the same pairs in the same steps, and the fingerprint tells when one did not."""

from pathlib import Path

from rmtrain.config import load_config
from rmtrain.data import preference_collate_fn
from tools.bench_throughput.arms import rmtrain_cfg_options
from tools.bench_throughput.hooks import batch_sequences
from tools.bench_throughput.settings import CONFIG_DIR, LOG_INTERVAL
from tools.bench_throughput.window import (
    WindowDataset,
    expected_window_digest,
    step_digest,
    window_batches,
    window_digest,
)

SPEC = dict(
    tokenizer_dir="tok", model_dir="model", data_file="pairs.jsonl", map_fn="string_preference_map_fn",
    reward_token_id=5, pad_token_id=3, max_length=128, max_packed_length=512, pairs_per_step=4,
    warmup=1, steps=3, lr=2e-5, betas=[0.9, 0.95], weight_decay=0.1, max_norm=1.0, dtype="float32",
    window_file="window.json",
)  # fmt: skip


def _load(arm: str):
    spec = dict(SPEC, arm=arm)
    return load_config(str(CONFIG_DIR / f"{arm}.py"), rmtrain_cfg_options(spec, Path("steps.json")))


def test_padded_arm_config_takes_the_shared_inputs():
    cfg = _load("rmtrain_padded")
    loader, dataset = cfg.train_dataloader, cfg.train_dataloader.dataset
    assert loader.batch_size == 4
    assert loader.sampler.type.__name__ == "DefaultSampler" and loader.sampler.shuffle is False  # the window's order
    assert dataset.type.__name__ == "window_dataset" and dataset.window_file == "window.json"
    assert dataset.use_varlen_attn is False and cfg.model.use_varlen_attn is False
    assert dataset.reward_token_id == cfg.model.reward_token_id == 5
    assert dataset.tokenizer.pretrained_model_name_or_path == "tok"
    assert dataset.dataset.data_files == "pairs.jsonl"
    assert dataset.dataset_map_fn == "string_preference_map_fn"
    assert (dataset.max_length, dataset.max_packed_length) == (128, 512)
    assert loader.collate_fn.pad_token_id == 3
    assert cfg.model.llm.pretrained_model_name_or_path == "model"
    assert cfg.train_cfg.max_iters == 4
    assert cfg.optim_wrapper.dtype == "float32"
    assert dict(cfg.optim_wrapper.optimizer, type=None) == dict(type=None, lr=2e-5, betas=(0.9, 0.95), weight_decay=0.1)
    assert cfg.custom_hooks[0].out_file == "steps.json"
    assert cfg.default_hooks.logger.interval == cfg.log_processor.window_size == LOG_INTERVAL


def test_packed_arm_config_differs_only_in_packing():
    padded, packed = _load("rmtrain_padded"), _load("rmtrain_packed")
    assert packed.train_dataloader.batch_size == 1  # one packed row (a step's pairs) per optimizer step
    assert packed.train_dataloader.dataset.use_varlen_attn is True and packed.model.use_varlen_attn is True
    assert packed.train_dataloader.sampler == padded.train_dataloader.sampler
    for key in ("optim_wrapper", "train_cfg", "default_hooks", "param_scheduler", "custom_hooks", "randomness"):
        assert packed[key] == padded[key], key
    assert dict(packed.model, use_varlen_attn=None) == dict(padded.model, use_varlen_attn=None)
    unpacked = dict(packed.train_dataloader.dataset, use_varlen_attn=False)
    assert unpacked == padded.train_dataloader.dataset


def _pairs(lengths):
    class Pairs:  # the PreferenceDataset surface WindowDataset reads
        summary = {"pairs": len(lengths)}
        pairs = [{"chosen_ids": [i] * c, "rejected_ids": [100 + i] * r} for i, (c, r) in enumerate(lengths)]

        def __getitem__(self, index):
            return self.pairs[index]

    return Pairs()


def test_window_batches_are_whole_steps_and_seeded():
    lengths = [(3 + i % 7, 2 + i % 5) for i in range(40)]
    for order in ("grouped", "random"):
        window = window_batches(lengths, pairs_per_step=4, steps=6, order=order, seed=0)
        assert [len(step) for step in window] == [4] * 6
        assert len({i for step in window for i in step}) == 24  # no pair twice within the data set's size
        assert window == window_batches(lengths, pairs_per_step=4, steps=6, order=order, seed=0)
    assert window_batches(lengths, 4, 6, "random", 0) != window_batches(lengths, 4, 6, "random", 1)


def test_packed_and_padded_arms_collate_the_same_sequences_per_step():
    lengths = [(3, 2), (5, 1), (2, 4), (6, 6), (1, 3), (4, 2)]
    pairs = _pairs(lengths)
    window = [[3, 0], [5, 1], [2, 4]]
    packed, padded = WindowDataset(pairs, window, packed=True), WindowDataset(pairs, window, packed=False)
    assert len(packed) == 3 and len(padded) == 6
    assert packed.summary["bins"] == 3 and packed.summary["max_packed_length"] == 12 + 5
    expected = expected_window_digest(
        {
            "chosen_ids": [p["chosen_ids"] for p in pairs.pairs],
            "rejected_ids": [p["rejected_ids"] for p in pairs.pairs],
        },
        window,
        first=1,
    )
    packed_steps = [step_digest(batch_sequences(preference_collate_fn([packed[k]])["data"])) for k in range(3)]
    padded_steps = [
        step_digest(batch_sequences(preference_collate_fn([padded[2 * k], padded[2 * k + 1]], pad_token_id=0)["data"]))
        for k in range(3)
    ]
    assert packed_steps == padded_steps
    assert window_digest(packed_steps[1:]) == expected
    assert window_digest(packed_steps[:2]) != expected  # another window (or order) is told apart


def test_rewriting_the_page_keeps_what_was_written_around_the_generated_block():
    from tools.bench_throughput.report import replace_generated_block

    first = replace_generated_block("", "tables v1")
    page = "intro by hand\n" + first + "\n## Against the targets\nanalysis by hand\n"
    rewritten = replace_generated_block(page, "tables v2")
    assert "tables v2" in rewritten and "tables v1" not in rewritten
    assert rewritten.startswith("intro by hand\n") and rewritten.endswith("## Against the targets\nanalysis by hand\n")

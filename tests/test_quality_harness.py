"""The pieces of the quality harness (tools/quality) that decide what the two arms see and what gets reported."""

import datasets
import pytest
import torch

from rmtrain.data import LengthGroupedSampler, build_demo_tokenizer
from tools.quality import arms, report
from tools.quality.variants import VARIANTS, variant_options


class _Pairs:
    """The shape of a PreferenceDataset that the sampler and the harness read: a `pairs` table."""

    def __init__(self, lengths, record_index):
        self.pairs = {
            "chosen_ids": [[5] * c for c, _ in lengths],
            "rejected_ids": [[6] * r for _, r in lengths],
            "record_index": record_index,
        }

    def __len__(self):
        return len(self.pairs["record_index"])


def _records(n):
    return [
        {
            "prompt": [{"role": "user", "content": f"question {i}"}],
            "chosen": [{"role": "assistant", "content": f"good answer {i}" + " more" * (i % 5)}],
            "rejected": [{"role": "assistant", "content": f"bad {i}"}],
        }
        for i in range(n)
    ]


def test_rmtrain_arm_builds_the_sampler_the_harness_orders_with():
    cfg = arms.recipe_config("generated", {"train_dataloader.sampler.seed": 7})
    sampler = cfg.train_dataloader.sampler
    assert sampler.type is LengthGroupedSampler
    assert sampler.seed == 7 and sampler.batch_size == cfg.train_dataloader.batch_size == 16
    assert set(sampler) == {"type", "batch_size", "seed"}  # nothing else changes the order


def test_rmtrain_arm_validates_and_saves_only_after_its_last_timed_step_and_trains_the_same():
    """TRL's arm saves and validates nothing mid-run; rmtrain's arm must not either, or its s/step counts more work."""
    from tools.quality.variants import effective_settings

    recipe = arms.recipe_config("generated", {})
    same_work = arms.recipe_config("generated", arms.SAME_WORK_OPTIONS)
    steps = recipe.num_pairs // recipe.train_dataloader.batch_size
    assert recipe.train_cfg.val_interval < steps and recipe.default_hooks.checkpoint.interval < steps
    assert same_work.train_cfg.val_interval > steps and same_work.default_hooks.checkpoint.interval > steps
    assert same_work.default_hooks.checkpoint.get("save_last", True)  # the final checkpoint, the one scored
    assert effective_settings(same_work) == effective_settings(recipe)


def test_rmtrain_arm_logs_every_step_so_both_arms_are_timed_over_the_same_steps():
    from tools.quality.variants import effective_settings

    recipe = arms.recipe_config("generated", {})
    per_step = arms.recipe_config("generated", {**arms.SAME_WORK_OPTIONS, **arms.PER_STEP_LOG_OPTIONS})
    assert recipe.default_hooks.logger.interval > 1 and recipe.log_processor.window_size > 1
    assert per_step.default_hooks.logger.interval == 1 and per_step.log_processor.window_size == 1
    assert effective_settings(per_step) == effective_settings(recipe)


def test_mean_step_seconds_leaves_out_the_first_step():
    assert arms.mean_step_seconds([30.0, 2.0, 4.0]) == 3.0
    assert arms.mean_step_seconds([30.0]) is None


def test_trl_step_end_times_are_the_gaps_between_step_ends(monkeypatch):
    clock = iter([10.0, 13.0, 14.5, 17.5])
    monkeypatch.setattr(arms.time, "perf_counter", lambda: next(clock))
    callback = arms.step_end_times_callback()
    callback.on_train_begin(None, None, None)
    for _ in range(3):
        callback.on_step_end(None, None, None)
    assert callback.step_times() == [3.0, 1.5, 3.0]


def test_training_order_is_the_seeded_sampler_order_and_changes_with_the_seed():
    lengths = [(3 + i % 7, 2 + i % 3) for i in range(64)]
    pairs = _Pairs(lengths, list(range(64)))
    order = arms.training_order(pairs, batch_size=16, seed=3)
    assert order == list(LengthGroupedSampler(pairs, batch_size=16, seed=3))
    assert sorted(order) == list(range(64))
    assert order != arms.training_order(pairs, batch_size=16, seed=4)


def test_ordered_records_follow_the_pairs_record_index():
    source = _records(6)
    pairs = _Pairs([(1, 1)] * 3, record_index=[4, 0, 2])  # a split keeps records 4, 0 and 2, in that order
    got = arms.ordered_records(source, pairs, order=[2, 0, 1])
    assert [r["prompt"][0]["content"] for r in got] == ["question 2", "question 4", "question 0"]


def test_trl_arm_walks_the_records_in_the_given_order(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from trl import RewardConfig

    tokenizer = build_demo_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForSequenceClassification(config)
    records = _records(12)
    order = [5, 11, 0, 7, 3, 9, 1, 10, 2, 8, 4, 6]
    args = RewardConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none", use_cpu=True, max_length=None
    )
    trainer = arms.in_order_reward_trainer()(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list([records[i] for i in order]),
        processing_class=tokenizer,
    )
    seen = []
    for batch in trainer.get_train_dataloader():
        ids = batch["input_ids"][: batch["input_ids"].shape[0] // 2]  # the chosen sides come first
        mask = batch["attention_mask"][: ids.shape[0]]
        seen += [tokenizer.decode(row[m.bool()]) for row, m in zip(ids, mask)]
    expected = [f"question {i}" for i in order]
    assert len(seen) == len(expected)
    assert all(question in text for question, text in zip(expected, seen))


def test_paired_differences_are_per_seed_and_over_shared_seeds_only():
    diff = report.paired_differences({0: 0.90, 1: 0.85, 2: 0.80}, {0: 0.88, 1: 0.87, 3: 0.5})
    assert diff["seeds"] == [0, 1]
    assert diff["diffs"] == pytest.approx([0.02, -0.02])
    assert diff["mean"] == pytest.approx(0.0)
    assert diff["sd"] == pytest.approx(0.02 * 2**0.5)
    assert (diff["min"], diff["max"]) == pytest.approx((-0.02, 0.02))
    assert report.paired_differences({0: 1.0}, {1: 1.0}) is None


def test_replace_block_replaces_only_its_own_block():
    text = "# Title\n\nintro\n\n<!-- quality:generated start -->\nold\n<!-- quality:generated end -->\n\ntail\n"
    once = report.replace_block(text, "generated", "new table")
    assert once == text.replace("\nold\n", "\nnew table\n")
    both = report.replace_block(once, "real", "real table")
    assert both.startswith(once.rstrip("\n")) and both.endswith("<!-- quality:real end -->\n")
    assert report.replace_block(both, "real", "real table") == both  # a rerun changes nothing


def test_every_variant_names_what_the_recipe_changed_and_gives_known_keys():
    for name, (_, settings) in VARIANTS.items():
        if name != "recipe":
            assert {"value_head_init", "reward_token_id", "penalty_type", "head_lr_mult"} <= set(settings), name
        arms.recipe_config("generated", variant_options(name))  # unknown keys would raise ConfigError
    assert variant_options("last_token")["train_dataloader.dataset.reward_token_id"] is None
    assert variant_options("last_token")["val_dataloader.dataset.reward_token_id"] is None


def test_report_names_rows_by_the_settings_the_variants_mean_now():
    from tools.quality.__main__ import name_rows_by_settings, run_key
    from tools.quality.variants import effective_settings

    now = effective_settings(arms.recipe_config("generated", variant_options("head_lr_x10")))
    gone = {**now, "lr": 1.0}  # settings no variant trains any more
    results = [
        {"suite": "generated", "arm": "rmtrain", "seed": 0, "key": run_key("generated", "rmtrain", 0, now), "variants": ["recipe_then"]},
        {"suite": "generated", "arm": "rmtrain", "seed": 0, "key": run_key("generated", "rmtrain", 0, gone), "variants": ["old"]},
        {"suite": "generated", "arm": "trl", "seed": 0, "key": run_key("generated", "trl", 0, None), "variants": ["trl"]},
    ]  # fmt: skip
    name_rows_by_settings(results, "generated")
    assert set(results[0]["variants"]) == {"recipe", "head_lr_x10"}  # the recipe trains the head at 10x now
    assert results[1]["variants"] == ["old"]
    assert results[2]["variants"] == ["trl"]

"""The start-up checks and settings of `sequence_parallel_size`, in this process (no training)."""

from pathlib import Path

import pytest
from mmengine.dataset import DefaultSampler

from rmtrain.config import load_config
from rmtrain.data.samplers import SequenceParallelSampler
from rmtrain.engine.sequence_parallel import check_sequence_parallel, sequence_parallel_setting, sharded_by_group
from rmtrain.errors import ConfigError
from rmtrain.parallel import data_parallel_rank_and_size

RECIPE = str(Path(__file__).parents[2] / "configs" / "tiny_llama_reward_full_demo.py")  # this checkout's


def test_recipes_carry_the_setting_and_cfg_options_may_change_it():
    assert load_config(RECIPE).sequence_parallel_size == 1
    assert load_config(RECIPE, {"sequence_parallel_size": 2}).sequence_parallel_size == 2


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_a_setting_that_is_not_a_positive_whole_number_is_refused(value):
    with pytest.raises(ConfigError, match="sequence_parallel_size must be a whole number"):
        sequence_parallel_setting({"sequence_parallel_size": value})


@pytest.mark.parametrize(
    "options, world, message",
    [
        ({}, 3, "world size 3 .* must be a multiple"),
        ({"model.llm.config.num_attention_heads": 2, "model.llm.config.num_key_value_heads": 1}, 4,
         "num_key_value_heads=1 must divide"),
        ({"model.llm.config.num_attention_heads": 1, "model.llm.config.num_key_value_heads": 1}, 4,
         "num_attention_heads=1 must divide"),
        ({"train_dataloader.dataset.use_varlen_attn": True, "train_dataloader.dataset.max_packed_length": 1023}, 4,
         "max_packed_length=1023 must divide"),
    ],
)  # fmt: skip
def test_each_failing_condition_names_the_setting(options, world, message):
    cfg = load_config(RECIPE, options)
    with pytest.raises(ConfigError, match=f"sequence_parallel_size=2: .*{message}"):
        check_sequence_parallel(cfg, 2, world)
    check_sequence_parallel(cfg, 1, world)  # nothing to check without sequence parallelism


def test_a_fitting_config_passes():
    check_sequence_parallel(load_config(RECIPE), 2, 4)


def test_without_groups_the_loaders_and_shards_are_unchanged():
    loader = {"sampler": {"type": DefaultSampler, "shuffle": True}}
    assert sharded_by_group(loader) is loader  # one process: no groups were made
    assert data_parallel_rank_and_size() == (0, 1)
    assert SequenceParallelSampler(list(range(10)), shuffle=False).num_samples == 10

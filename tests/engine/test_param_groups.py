"""Optimizer groups merged by setting: the same updates as one group per parameter, and old checkpoints resume."""

import copy
from pathlib import Path

import pytest
import torch
from mmengine.optim import CosineAnnealingLR, DefaultOptimWrapperConstructor
from torch import nn

from cli_runner import failure_text, run_rmtrain
from recipe_variants import recipe_variant
from rmtrain.checkpoints import load_checkpoint_file
from rmtrain.engine.param_groups import MergedGroupsOptimWrapperConstructor, merge_neighbour_groups, merge_saved_groups
from rmtrain.engine.schedulers import LinearWarmupLR

STEPS, WARMUP, SAVED_AT = 8, 4, 2  # saved inside the warm-up, which computes from base_values


class TrunkAndHead(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.LayerNorm(8))
        self.v_head = nn.Linear(8, 1)

    def forward(self, x):
        return self.v_head(self.model(x)).squeeze(-1)


def optim_wrapper_config(**extra) -> dict:
    optimizer = dict(type=torch.optim.AdamW, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.01)
    return dict(type="OptimWrapper", optimizer=optimizer, clip_grad=dict(max_norm=1.0), **extra)


def build(constructor, paramwise_cfg: dict, model: nn.Module):
    wrapper = constructor(optim_wrapper_config(), paramwise_cfg)(model)
    schedulers = [
        LinearWarmupLR(wrapper.optimizer, start_factor=0.1, by_epoch=False, begin=0, end=WARMUP),
        CosineAnnealingLR(
            wrapper.optimizer, eta_min=0.0, by_epoch=False, begin=WARMUP, end=STEPS, T_max=STEPS - WARMUP
        ),
    ]
    return wrapper, schedulers


def train(model, wrapper, schedulers, steps: range) -> None:
    for step in steps:
        generator = torch.Generator().manual_seed(step)
        inputs = torch.randn(16, 6, generator=generator)
        chosen, rejected = model(inputs[:8]), model(inputs[8:])
        wrapper.update_params(-torch.nn.functional.logsigmoid(chosen - rejected).mean())
        for scheduler in schedulers:
            scheduler.step()


HEAD_LR = dict(custom_keys={"v_head": dict(lr_mult=10.0)})


def test_groups_merge_by_setting_and_train_exactly_as_one_group_per_parameter():
    per_parameter, merged = TrunkAndHead(), TrunkAndHead()
    wrapper_a, schedulers_a = build(DefaultOptimWrapperConstructor, HEAD_LR, per_parameter)
    wrapper_b, schedulers_b = build(MergedGroupsOptimWrapperConstructor, HEAD_LR, merged)
    assert len(wrapper_a.optimizer.param_groups) == 10  # mmengine: one group for each parameter
    assert [len(group["params"]) for group in wrapper_b.optimizer.param_groups] == [8, 2]  # trunk, head
    assert [group["initial_lr"] for group in wrapper_b.optimizer.param_groups] == [1e-2, 1e-2 * 10.0]
    train(per_parameter, wrapper_a, schedulers_a, range(STEPS))
    train(merged, wrapper_b, schedulers_b, range(STEPS))
    for (name, a), b in zip(per_parameter.named_parameters(), merged.parameters()):
        assert torch.equal(a, b), name


def test_a_checkpoint_with_one_group_per_parameter_resumes_into_merged_groups():
    reference = TrunkAndHead()
    wrapper, schedulers = build(DefaultOptimWrapperConstructor, HEAD_LR, reference)
    train(reference, wrapper, schedulers, range(SAVED_AT))
    checkpoint = copy.deepcopy(
        dict(
            state_dict=reference.state_dict(),
            optimizer=wrapper.state_dict(),
            param_schedulers=[scheduler.state_dict() for scheduler in schedulers],
        )
    )
    train(reference, wrapper, schedulers, range(SAVED_AT, STEPS))

    merge_saved_groups(checkpoint)
    assert len(checkpoint["optimizer"]["param_groups"]) == 2
    resumed = TrunkAndHead()
    resumed.load_state_dict(checkpoint["state_dict"])
    wrapper, schedulers = build(MergedGroupsOptimWrapperConstructor, HEAD_LR, resumed)
    wrapper.load_state_dict(checkpoint["optimizer"])
    for scheduler, state in zip(schedulers, checkpoint["param_schedulers"]):
        scheduler.load_state_dict(state)
    train(resumed, wrapper, schedulers, range(SAVED_AT, STEPS))
    for (name, a), b in zip(reference.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_a_merged_checkpoint_is_left_as_it_is():
    model = TrunkAndHead()
    wrapper, schedulers = build(MergedGroupsOptimWrapperConstructor, HEAD_LR, model)
    train(model, wrapper, schedulers, range(2))
    checkpoint = dict(optimizer=wrapper.state_dict(), param_schedulers=[s.state_dict() for s in schedulers])
    before = copy.deepcopy(checkpoint)
    merge_saved_groups(checkpoint)
    assert checkpoint["optimizer"]["param_groups"] == before["optimizer"]["param_groups"]
    assert checkpoint["param_schedulers"] == before["param_schedulers"]


def test_a_group_that_spells_out_the_optimizer_setting_merges_with_one_that_does_not():
    # lr_mult 1.0 writes lr into the group; the saved state writes every setting into every group.
    groups = [dict(params=[1]), dict(params=[2], lr=0.1), dict(params=[3], lr=0.5), dict(params=[4])]
    merged = merge_neighbour_groups(groups, defaults=dict(lr=0.1))
    assert [group["params"] for group in merged] == [[1, 2], [3], [4]]
    assert merge_neighbour_groups(merged, defaults=dict(lr=0.1)) == merged


# The tiny demo recipe with the demo's 10x head learning rate (mmengine: one group per parameter).
HEAD_LR_CONFIG = "\noptim_wrapper['paramwise_cfg'] = dict(custom_keys={'v_head': dict(lr_mult=10.0)})\n"
# What rmtrain wrote before the merge: mmengine's constructor.
OLD_LAYOUT = "\noptim_wrapper['constructor'] = 'DefaultOptimWrapperConstructor'\n"
CRASH = "\nfrom train_stop_hook import StopAtIterHook\ncustom_hooks = [dict(type=StopAtIterHook, stop_at=6)]\n"


@pytest.mark.slow
def test_a_run_saved_by_an_older_rmtrain_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    settings = dict(num_pairs=64, batch_size=4, max_epochs=1, save_steps=4, save_total_limit=-1, log_interval=1)
    full = recipe_variant(tmp_path, "full", extra=HEAD_LR_CONFIG, **settings)
    old_crash = recipe_variant(tmp_path, "old_crash", extra=HEAD_LR_CONFIG + OLD_LAYOUT + CRASH, **settings)
    here = Path(__file__).parent
    run_rmtrain("train", full, "--work-dir", tmp_path / "a", cwd=tmp_path)
    crashed = run_rmtrain("train", old_crash, "--work-dir", tmp_path / "b", cwd=tmp_path, pythonpath=here, check=False)
    assert crashed.returncode == 17, failure_text(crashed)
    saved = load_checkpoint_file(str(tmp_path / "b" / "iter_4.pth"))
    assert len(saved["optimizer"]["param_groups"]) > 2  # one group per parameter

    run_rmtrain("train", full, "--work-dir", tmp_path / "b", "--resume", "auto", cwd=tmp_path)
    a = load_checkpoint_file(str(tmp_path / "a" / "iter_16.pth"))
    b = load_checkpoint_file(str(tmp_path / "b" / "iter_16.pth"))
    assert len(a["optimizer"]["param_groups"]) == len(b["optimizer"]["param_groups"]) == 2  # trunk, head
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key

"""One precision for every forward pass: training steps, validation, `rmtrain eval`, the export check;
fp16 with dynamic loss scaling; what 'auto' picks on each kind of device (capability mocked)."""

from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from torch import nn

from recipe_variants import recipe_variant
from rmtrain import convert
from rmtrain.config import ScoringInputs
from rmtrain.engine import precision
from rmtrain.engine.deepspeed import deepspeed_config
from rmtrain.engine.precision import AutocastOptimWrapper, resolve_precision
from rmtrain.engine.train import train
from rmtrain.errors import ConfigError
from rmtrain.evaluation.evaluate import score_pairs
from rmtrain.model.reward_model import RewardModel

TINY = [
    ("hidden_size=128", "hidden_size=32"),
    ("intermediate_size=256", "intermediate_size=64"),
    ("num_hidden_layers=4", "num_hidden_layers=2"),
]


def _autocast_state() -> tuple[bool, torch.dtype | None]:
    enabled = torch.is_autocast_enabled("cpu")
    return enabled, torch.get_autocast_dtype("cpu") if enabled else None


def test_validation_runs_in_the_training_precision(tmp_path, monkeypatch):
    # bf16 is forced: CPU autocast runs it even without bf16 instructions.
    config = recipe_variant(
        tmp_path, "bf16_val", replacements=TINY, num_pairs=16, batch_size=4, max_epochs=1, save_steps=4,
        log_interval=1, mixed_precision="bfloat16",
    )  # fmt: skip
    seen = []
    forward = RewardModel.forward

    def recording_forward(self, data, data_samples=None, mode="loss"):
        seen.append((mode, *_autocast_state()))
        return forward(self, data, data_samples, mode)

    monkeypatch.setattr(RewardModel, "forward", recording_forward)
    monkeypatch.chdir(tmp_path)
    train(str(config), work_dir=str(tmp_path / "work"), seed=0)
    modes = {mode for mode, _, _ in seen}
    assert modes == {"loss", "predict"}, seen
    assert all((enabled, dtype) == (True, torch.bfloat16) for _, enabled, dtype in seen), seen
    assert _autocast_state() == (False, None)  # left off after validation


def test_rmtrain_eval_scores_under_autocast_in_the_weights_dtype(tiny_llama):
    trunk = tiny_llama.to(torch.bfloat16)
    head = nn.Linear(trunk.config.hidden_size, 1, bias=False).to(torch.bfloat16)
    seen = []
    forward = trunk.forward
    trunk.forward = lambda *args, **kwargs: seen.append(_autocast_state()) or forward(*args, **kwargs)
    pairs = SimpleNamespace(pairs={"chosen_ids": [[5, 6, 7, 3], [8, 9, 3]], "rejected_ids": [[5, 6, 3], [4, 3]]})
    chosen, rejected = score_pairs(trunk, head, pairs, batch_size=2, pad_token_id=0, device=torch.device("cpu"))
    assert len(chosen) == len(rejected) == 2
    assert seen and all(state == (True, torch.bfloat16) for state in seen)


def test_the_export_check_scores_the_bf16_folder_under_autocast(tiny_llama_config, demo_tokenizer):
    from transformers import LlamaForSequenceClassification

    tiny_llama_config.num_labels = 1
    tiny_llama_config.pad_token_id = demo_tokenizer.pad_token_id
    model = LlamaForSequenceClassification(tiny_llama_config).to(torch.bfloat16).eval()
    seen = []
    forward = model.model.forward
    model.model.forward = lambda *args, **kwargs: seen.append(_autocast_state()) or forward(*args, **kwargs)
    inputs = ScoringInputs(reward_token_id=3, max_length=64, use_varlen_attn=False, chat_template=None)
    scores = convert._scores_of_export(model, demo_tokenizer, is_internlm2=False, inputs=inputs)
    assert len(scores) == 3 and all(s.shape == (len(convert.VERIFY_CONVERSATIONS),) for s in scores.values())
    assert len(seen) == 3 and all(state == (True, torch.bfloat16) for state in seen)


def _mock_cuda(monkeypatch, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # Emulated bf16 reports itself as supported: 'auto' must not trust it.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
)
def test_auto_picks_bf16_only_on_gpus_that_compute_it(monkeypatch, capability, dtype):
    _mock_cuda(monkeypatch, capability)  # V100 7.0, T4 7.5, A100 8.0, H100 9.0
    assert resolve_precision("auto", "cuda") == dtype
    assert resolve_precision("bfloat16", "cuda") == torch.bfloat16  # asked for: given


@pytest.mark.parametrize(("native", "dtype"), [(False, torch.float32), (True, torch.bfloat16)])
def test_auto_on_cpu(monkeypatch, native, dtype):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", "cpu") == dtype


def test_an_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="got 'half'"):
        AutocastOptimWrapper(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1), dtype="half")


def _fp16_wrapper(model, **kwargs):
    return AutocastOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1), dtype="float16", **kwargs)


def test_fp16_scales_the_loss_unscales_before_clipping_and_steps(monkeypatch):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    reference = nn.Linear(4, 1)
    reference.load_state_dict(model.state_dict())
    wrapper = _fp16_wrapper(model, clip_grad=dict(max_norm=0.5))
    x = torch.randn(8, 4) * 0.1  # small enough that the scaled fp16 gradients stay finite
    clipped_norms = []
    clip = wrapper._clip_grad
    monkeypatch.setattr(wrapper, "_clip_grad", lambda: clipped_norms.append(_grad_norm(model)) or clip())
    with wrapper.optim_context(model):
        assert _autocast_state() == (True, torch.float16)
        loss = model(x).float().pow(2).mean()
    wrapper.update_params(loss)
    assert wrapper.loss_scaler is not None and wrapper.loss_scaler.get_scale() == 65536.0
    # Clipping saw the true gradient, not the one scaled by 65536.
    reference(x).pow(2).mean().backward()
    assert clipped_norms[0] == pytest.approx(_grad_norm(reference), rel=1e-2)
    moved = (model.weight - reference.weight).norm().item()
    assert 0 < moved <= 0.1 * 0.5 + 1e-4  # one SGD step of a gradient clipped to norm 0.5


def _grad_norm(model) -> float:
    return torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()


def test_fp16_skips_an_overflowing_step_and_lowers_the_scale():
    model = nn.Linear(2, 1)
    before = model.weight.detach().clone()
    wrapper = _fp16_wrapper(model)
    with wrapper.optim_context(model):
        loss = model(torch.full((1, 2), 60000.0)).sum() * 1e6  # inf once scaled
    wrapper.update_params(loss)
    assert torch.equal(model.weight, before)
    assert wrapper.loss_scaler.get_scale() == 32768.0


def test_fp16_loss_scale_is_saved_and_restored():
    model = nn.Linear(2, 1)
    wrapper = _fp16_wrapper(model)
    with wrapper.optim_context(model):
        loss = model(torch.ones(1, 2)).sum() * 1e30
    wrapper.update_params(loss)
    state = wrapper.state_dict()
    assert state["loss_scaler"]["scale"] == 32768.0
    restored = _fp16_wrapper(model)
    restored.load_state_dict(state)  # before the first forward pass, as on resume
    with restored.optim_context(model):
        pass
    assert restored.loss_scaler.get_scale() == 32768.0


def _ds_cfg(precision_name: str) -> Config:
    return Config(
        dict(
            optim_wrapper=dict(dtype=precision_name, optimizer=dict(lr=1e-3)),
            train_dataloader=dict(batch_size=2),
        )
    )


@pytest.mark.parametrize(("capability", "bf16", "fp16"), [((7, 0), False, True), ((8, 0), True, False)])
def test_deepspeed_follows_the_same_precision_rule(monkeypatch, capability, bf16, fp16):
    _mock_cuda(monkeypatch, capability)
    config = deepspeed_config("zero2", _ds_cfg("auto"), world_size=1)
    assert (config["bf16"]["enabled"], config["fp16"]["enabled"]) == (bf16, fp16)


def test_autocast_context_is_off_for_fp32():
    with precision.autocast_context("cpu", torch.float32):
        assert _autocast_state() == (False, None)

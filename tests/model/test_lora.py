"""LoRA and QLoRA reward models (rmtrain.model.lora): what is trained, what is saved, what is refused.

The QLoRA tests run bitsandbytes' real nf4 layers (forward and backward run on the CPU).
"""

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModel, BitsAndBytesConfig, LlamaModel

from rmtrain.checkpoints import BASE_IDENTITY_KEY, VALUE_HEAD_KEY, decode_identity, load_model_weights
from rmtrain.errors import CheckpointError, ConfigError
from rmtrain.model import lora as lora_trunk
from rmtrain.model.reward_model import RewardModel
from rmtrain.scoring import pad_sequences

REWARD = 3
ROWS = [[1, 40, 41, 42, 43, 2, REWARD], [1, 50, 51, 2, REWARD], [1, 60, 61, 62, 63, 64, 65, 2, REWARD]]
NF4 = dict(
    type=BitsAndBytesConfig,
    load_in_4bit=True,
    bnb_4bit_quant_type="nf4",
    bnb_4bit_use_double_quant=True,
    bnb_4bit_compute_dtype=torch.float32,
)


def _save_base(tiny_llama_config, folder, seed=0):
    torch.manual_seed(seed)
    LlamaModel(tiny_llama_config).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def base_folder(tiny_llama_config, tmp_path):
    return _save_base(tiny_llama_config, tmp_path / "base")


@pytest.fixture
def wide_base_folder(tiny_llama_config, tmp_path):
    """128 wide: bitsandbytes' CPU inference kernels need rows of whole 64-value blocks in 32-row tiles."""
    tiny_llama_config.hidden_size, tiny_llama_config.intermediate_size, tiny_llama_config.head_dim = 128, 256, 32
    return _save_base(tiny_llama_config, tmp_path / "wide")


def _llm(folder, quantization=None):
    llm = dict(type=AutoModel.from_pretrained, pretrained_model_name_or_path=folder, dtype=torch.float32)
    if quantization:
        llm["quantization_config"] = quantization
    return llm


def _rm(folder, quantization=None, lora=None, **kwargs):
    kwargs.setdefault("use_activation_checkpointing", False)
    lora = lora or dict(type=LoraConfig, r=4, lora_alpha=8)
    return RewardModel(llm=_llm(folder, quantization), reward_token_id=REWARD, lora=lora, **kwargs)


def _batch(rows):
    ids, mask = pad_sequences(rows + rows[::-1], pad_token_id=0)
    return {"input_ids": ids, "attention_mask": mask, "num_tokens": int(mask.sum())}


def _train_steps(rm, steps=3, seed=0):
    """A few AdamW steps on the same batch: moves the head, then the adapters."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in rm.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        rm(_batch(ROWS))["loss"].backward()
        optimizer.step()


def test_only_adapters_and_head_are_trained_and_saved(base_folder):
    rm = _rm(base_folder)
    trainable = {name for name, param in rm.named_parameters() if param.requires_grad}
    assert VALUE_HEAD_KEY in trainable
    assert trainable - {VALUE_HEAD_KEY} and all(".lora_" in name for name in trainable - {VALUE_HEAD_KEY})
    saved = rm.state_dict()
    assert set(saved) == trainable | {BASE_IDENTITY_KEY}
    assert decode_identity(saved[BASE_IDENTITY_KEY])["name_or_path"] == base_folder
    # the default target modules for Llama: attention and MLP projections
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable if ".lora_" in name}
    assert adapted == set(lora_trunk.DEFAULT_TARGET_MODULES["llama"])


def test_trained_lora_state_dict_reloads_exactly(base_folder):
    rm = _rm(base_folder)
    _train_steps(rm)
    saved = {key: value.clone() for key, value in rm.state_dict().items()}
    assert torch.count_nonzero(saved[VALUE_HEAD_KEY]) > 0
    assert any(".lora_B" in key and torch.count_nonzero(value) > 0 for key, value in saved.items())
    fresh = _rm(base_folder)
    load_model_weights(fresh, saved, "iter_3.pth")
    batch = _batch(ROWS)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval().score(batch), rm.eval().score(batch), atol=0, rtol=0)


def test_modules_to_save_are_trained_in_full_and_saved(base_folder):
    rm = _rm(base_folder, lora=dict(type=LoraConfig, r=4, target_modules=["q_proj"], modules_to_save=["norm"]))
    saved = set(rm.state_dict())
    assert any(key.endswith("norm.modules_to_save.default.weight") for key in saved)


def test_target_modules_matching_nothing_lists_the_modules_that_exist(base_folder):
    with pytest.raises(ConfigError, match=r"\['qkv'\] match no module.*down_proj, gate_proj, k_proj, o_proj"):
        _rm(base_folder, lora=dict(type=LoraConfig, r=4, target_modules=["q_proj", "qkv"]))


def test_quantization_without_lora_is_refused(base_folder):
    with pytest.raises(ConfigError, match="needs model.lora"):
        RewardModel(llm=_llm(base_folder, NF4), reward_token_id=REWARD)


@pytest.mark.parametrize(
    "package, install", [("bitsandbytes", "pip install bitsandbytes=="), ("peft", "pip install peft==")]
)
def test_missing_or_old_package_names_the_install_command(base_folder, monkeypatch, package, install):
    from packaging.version import Version

    monkeypatch.setattr(lora_trunk, "installed_version", lambda name: None if name == package else Version("99"))
    with pytest.raises(ConfigError, match=f"'{package}' package, which is not installed: {install}"):
        _rm(base_folder, NF4)
    monkeypatch.setattr(
        lora_trunk, "installed_version", lambda name: Version("0.1") if name == package else Version("99")
    )
    with pytest.raises(ConfigError, match=f"needs {package} >= .*0.1 is installed: {install}"):
        _rm(base_folder, NF4)


def test_full_checkpoint_into_lora_config_and_the_reverse(base_folder, tiny_llama):
    lora_model = _rm(base_folder)
    full_model = RewardModel(llm=_llm(base_folder), reward_token_id=REWARD)
    with pytest.raises(CheckpointError, match="full.pth holds a model trained without LoRA.*config sets model.lora"):
        load_model_weights(lora_model, full_model.state_dict(), "full.pth")
    with pytest.raises(CheckpointError, match="lora.pth holds LoRA adapters.*config has no lora"):
        load_model_weights(full_model, lora_model.state_dict(), "lora.pth")
    # the same through torch's own load_state_dict (mmengine's resume path)
    with pytest.raises(CheckpointError, match="holds LoRA adapters"):
        full_model.load_state_dict(lora_model.state_dict(), strict=False)


def test_adapters_of_another_base_model_are_refused(base_folder, tiny_llama_config, tmp_path):
    other = _save_base(tiny_llama_config, tmp_path / "other", seed=1)
    saved = _rm(base_folder).state_dict()
    with pytest.raises(CheckpointError, match=f"trained on base model {base_folder} .* this config builds {other}"):
        _rm(other).load_state_dict(saved, strict=False)


def test_activation_checkpointing_gives_the_same_gradients(base_folder):
    trained = _rm(base_folder)
    _train_steps(trained, steps=2)  # head and adapters non-zero, so every adapter gets a gradient
    grads = []
    for checkpointing in (False, True):
        rm = _rm(base_folder, use_activation_checkpointing=checkpointing)
        rm.load_state_dict(trained.state_dict(), strict=True)
        rm.train()
        rm(_batch(ROWS))["loss"].backward()
        grads.append({name: p.grad.clone() for name, p in rm.named_parameters() if p.requires_grad})
    assert all(torch.count_nonzero(grad) > 0 for name, grad in grads[1].items() if ".lora_A" in name)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_merged_lora_trunk_scores_like_the_adapters(base_folder):
    rm = _rm(base_folder)
    _train_steps(rm)
    batch = _batch(ROWS)
    with torch.no_grad():
        before = rm.eval().score(batch)
        rm.merge_lora()
        after = rm.score(batch)
    assert isinstance(rm.model, LlamaModel) and rm.lora is None
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_qlora_uses_real_nf4_layers_and_trains_the_adapters(wide_base_folder):
    rm = _rm(wide_base_folder, NF4)
    q_proj = rm.model.base_model.model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.weight.quant_state.quant_type == "nf4"
    assert q_proj.weight.quant_state.nested  # double quantisation
    before = {key: value.clone() for key, value in rm.state_dict().items()}
    _train_steps(rm, steps=4)
    after = rm.state_dict()
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert (
        VALUE_HEAD_KEY in changed
        and any(".lora_A" in key for key in changed)
        and any(".lora_B" in key for key in changed)
    )
    # the saved checkpoint holds no quantised base weights
    assert not any("absmax" in key or "quant_" in key for key in after)


def test_qlora_merge_rebuilds_the_trunk_in_full_precision(wide_base_folder):
    rm = _rm(wide_base_folder, NF4)
    _train_steps(rm)
    batch = _batch(ROWS)
    with torch.no_grad():
        quantised = rm.eval().score(batch)
        rm.merge_lora()
        merged = rm.score(batch)
    assert all(type(module).__name__ != "Linear4bit" for module in rm.model.modules())
    assert rm.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    # nf4 rounding separates them a little; a lost head or adapter would be far off
    assert (merged - quantised).abs().max() < 0.1 * max(1.0, quantised.abs().max().item())
    assert torch.count_nonzero(merged) == merged.numel()


def test_compute_dtype_is_chosen_where_left_out(wide_base_folder):
    quantization = {key: value for key, value in NF4.items() if key != "bnb_4bit_compute_dtype"}
    rm = _rm(wide_base_folder, quantization)
    layer = rm.model.base_model.model.layers[0].mlp.up_proj.base_layer
    expected = (
        torch.bfloat16
        if rm._llm_config["quantization_config"]["bnb_4bit_compute_dtype"] == torch.bfloat16
        else torch.float32
    )
    assert layer.compute_dtype == expected


def test_runner_initialisation_keeps_peft_initialisation(base_folder):
    # mmengine's Runner calls init_weights() before training; transformers would redraw lora_B non-zero
    rm = _rm(base_folder)
    before = {key: value.clone() for key, value in rm.state_dict().items()}
    rm.init_weights()
    after = rm.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    lora_b = [value for key, value in after.items() if ".lora_B" in key]
    assert lora_b and all(torch.count_nonzero(value) == 0 for value in lora_b)

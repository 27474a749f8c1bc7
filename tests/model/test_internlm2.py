"""Tests for rmtrain.model.internlm2: maths (against transformers' Llama), weight names, loading
through the Auto classes and as standalone remote code, the reward API and checkpointing."""

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from rmtrain.data.demo import DEMO_CHAT_TEMPLATE, build_demo_tokenizer
from rmtrain.model.internlm2 import (
    INTERNLM2_MODELING_FILES,
    InternLM2Config,
    InternLM2ForCausalLM,
    InternLM2ForRewardModel,
    InternLM2Model,
)
from rmtrain.model.reward_model import trunk_of

SHAPE = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
TOL = 1e-5
REWARD = 3  # the demo tokenizer's <|reward|>


def _internlm2(seed=0, **overrides):
    kwargs = {**SHAPE, "bias": False, "rope_theta": 10000.0, **overrides}
    torch.manual_seed(seed)
    return InternLM2ForCausalLM(InternLM2Config(**kwargs)).float().eval()


# ---------------------------------------------------------------------------------------------
# Equivalence with Llama: the same weights in transformers' LlamaForCausalLM give the same outputs.


def internlm2_to_llama_state_dict(state_dict, config):
    """InternLM2 parameter names/layout -> Llama's (unpacking the grouped wqkv)."""
    kv_heads = config.num_key_value_heads
    group = config.num_attention_heads // kv_heads
    head_dim = config.hidden_size // config.num_attention_heads
    renames = {
        "model.tok_embeddings.": "model.embed_tokens.",
        "output.": "lm_head.",
        "model.norm.": "model.norm.",
        ".attention.wo.": ".self_attn.o_proj.",
        ".feed_forward.w1.": ".mlp.gate_proj.",
        ".feed_forward.w3.": ".mlp.up_proj.",
        ".feed_forward.w2.": ".mlp.down_proj.",
        ".attention_norm.": ".input_layernorm.",
        ".ffn_norm.": ".post_attention_layernorm.",
    }
    out = {}
    for name, tensor in state_dict.items():
        if ".attention.wqkv." in name:
            layer, kind = name.split(".attention.wqkv.")  # kind: "weight" or "bias"
            rest = tuple(tensor.shape[1:])
            # rows: per kv head, `group` query heads, then one key head, then one value head
            grouped = tensor.reshape(kv_heads, group + 2, head_dim, *rest)
            out[f"{layer}.self_attn.q_proj.{kind}"] = grouped[:, :group].reshape(-1, *rest)
            out[f"{layer}.self_attn.k_proj.{kind}"] = grouped[:, group].reshape(-1, *rest)
            out[f"{layer}.self_attn.v_proj.{kind}"] = grouped[:, group + 1].reshape(-1, *rest)
            continue
        new = name
        for old, replacement in renames.items():
            if old in new:
                new = new.replace(old, replacement)
                break
        out[new] = tensor
    return out


def _llama_twin(model, attn_implementation):
    cfg = model.config
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        rope = {"rope_type": cfg.rope_scaling["type"], "factor": cfg.rope_scaling["factor"]}
        rope["rope_theta"] = cfg.rope_theta
    llama_config = LlamaConfig(
        **{key: getattr(cfg, key) for key in SHAPE},
        rms_norm_eps=cfg.rms_norm_eps,
        attention_bias=cfg.bias,
        rope_parameters=rope,
        pad_token_id=cfg.pad_token_id,
        tie_word_embeddings=False,
    )
    llama_config._attn_implementation = attn_implementation
    llama = LlamaForCausalLM(llama_config).float().eval()
    missing, unexpected = llama.load_state_dict(internlm2_to_llama_state_dict(model.state_dict(), cfg), strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)
    return llama


def _max_diffs(model, llama, input_ids, attention_mask=None, position_ids=None):
    """Max |diff| of final hidden states and logits over the positions where attention_mask is 1."""
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=True,
        use_cache=False,  # Llama looks for packed rows only without a cache
    )
    with torch.no_grad():
        ours, theirs = model(**kwargs), llama(**kwargs)
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    hidden = (ours.hidden_states[-1] - theirs.hidden_states[-1])[real].abs().max().item()
    logits = (ours.logits - theirs.logits)[real].abs().max().item()
    return hidden, logits


EQUIVALENCE_CASES = {
    "plain": dict(),
    "bias": dict(bias=True),
    "linear": dict(rope_scaling={"type": "linear", "factor": 2.0}),
    # sequences below are 40 long, beyond max_position_embeddings=16, so the NTK base really grows
    "dynamic": dict(rope_scaling={"type": "dynamic", "factor": 3.0}, max_position_embeddings=16),
}


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("case", list(EQUIVALENCE_CASES))
def test_matches_llama_with_unpacked_weights(case, attn_implementation):
    overrides = EQUIVALENCE_CASES[case]
    model = _internlm2(**overrides)
    if "bias" in overrides:  # default init zeroes biases; make them matter
        with torch.no_grad():
            for layer in model.model.layers:
                layer.attention.wqkv.bias.normal_(0, 0.5)
                layer.attention.wo.bias.normal_(0, 0.5)
    llama = _llama_twin(model, attn_implementation)

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, SHAPE["vocab_size"], (3, 40), generator=generator)
    diffs = {"no mask": _max_diffs(model, llama, ids)}

    mask = torch.ones_like(ids)
    mask[1, 25:] = 0  # right padding
    mask[2, 9:] = 0
    diffs["right padded"] = _max_diffs(model, llama, ids.masked_fill(mask == 0, 0), mask)

    if case != "dynamic":  # Llama's dynamic RoPE keeps state across calls; compare one call only
        # packed rows (position ids restart, no mask): segments must not see each other
        positions = torch.cat([torch.arange(15), torch.arange(25)])[None].expand(3, -1)
        diffs["packed"] = _max_diffs(model, llama, ids, position_ids=positions)

    print(f"\n[{case}/{attn_implementation}] max |diff| (hidden, logits): {diffs}")
    for name, (hidden, logits) in diffs.items():
        assert hidden < TOL and logits < TOL, (name, hidden, logits)

    if "rope_scaling" in overrides:  # the scaling is really in effect on these inputs
        unscaled = copy.deepcopy(model)
        unscaled.model.rotary_emb.scaling_type = None
        with torch.no_grad():
            assert (unscaled(input_ids=ids).logits - model(input_ids=ids).logits).abs().max() > 1e-4
            if case == "dynamic":  # ... and dynamic NTK only beyond max_position_embeddings (16)
                short = ids[:, :16]
                assert torch.equal(unscaled(input_ids=short).logits, model(input_ids=short).logits)


def test_llama_twin_is_sensitive_to_wqkv_layout():
    """The equivalence test would notice a wrong unpacking: swapping two query heads breaks it."""
    model = _internlm2()
    llama = _llama_twin(model, "eager")
    head_dim = SHAPE["hidden_size"] // SHAPE["num_attention_heads"]
    with torch.no_grad():
        q = llama.model.layers[0].self_attn.q_proj.weight
        q[:head_dim], q[head_dim : 2 * head_dim] = q[head_dim : 2 * head_dim].clone(), q[:head_dim].clone()
    ids = torch.randint(3, SHAPE["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(0))
    _, logits = _max_diffs(model, llama, ids)
    assert logits > 1e-3


def test_packed_rows_equal_separate_rows():
    model = _internlm2()
    ids = torch.randint(3, SHAPE["vocab_size"], (1, 20), generator=torch.Generator().manual_seed(2))
    positions = torch.cat([torch.arange(8), torch.arange(12)])[None]
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions).logits
        first = model(input_ids=ids[:, :8]).logits
        second = model(input_ids=ids[:, 8:]).logits
    assert (packed - torch.cat([first, second], dim=1)).abs().max() < TOL


# ---------------------------------------------------------------------------------------------
# Config


def test_config_validates_rope_scaling_and_round_trips(tmp_path):
    for bad in (
        {"type": "yarn", "factor": 2.0},
        {"type": "linear", "factor": 1.0},
        {"type": "linear"},
        {"type": "dynamic", "factor": "2"},
        "linear",
    ):
        with pytest.raises(ValueError):
            InternLM2Config(rope_scaling=bad)
    with pytest.raises(ValueError):
        InternLM2Config(num_attention_heads=8, num_key_value_heads=3, hidden_size=64)
    config = InternLM2Config(**SHAPE, rope_scaling={"type": "dynamic", "factor": 2}, reward_token_id=7)
    assert config.rope_scaling == {"type": "dynamic", "factor": 2.0}
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)
    assert config.tie_word_embeddings is False and config.hidden_act == "silu"
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "internlm2" and saved["rope_scaling"] == {"type": "dynamic", "factor": 2.0}
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, InternLM2Config)
    assert loaded.rope_scaling == config.rope_scaling and loaded.reward_token_id == 7


# ---------------------------------------------------------------------------------------------
# Weight names, save/load, published-folder loading


PUBLISHED_NAMES = [
    "model.tok_embeddings.weight",
    "model.layers.0.attention.wqkv.weight",
    "model.layers.0.attention.wo.weight",
    "model.layers.0.feed_forward.w1.weight",
    "model.layers.0.feed_forward.w2.weight",
    "model.layers.0.feed_forward.w3.weight",
    "model.layers.0.attention_norm.weight",
    "model.layers.0.ffn_norm.weight",
    "model.layers.1.attention.wqkv.weight",
    "model.norm.weight",
    "output.weight",
]


def test_state_dict_uses_published_names_and_init():
    model = _internlm2()
    state = model.state_dict()
    expected = {"model.tok_embeddings.weight", "model.norm.weight", "output.weight"}
    for i in range(SHAPE["num_hidden_layers"]):
        expected |= {
            f"model.layers.{i}.{n}.weight"
            for n in (
                "attention.wqkv",
                "attention.wo",
                "feed_forward.w1",
                "feed_forward.w2",
                "feed_forward.w3",
                "attention_norm",
                "ffn_norm",
            )
        }
    assert set(state) == expected
    assert set(PUBLISHED_NAMES) <= set(state)
    head_dim = SHAPE["hidden_size"] // SHAPE["num_attention_heads"]
    qkv_rows = (SHAPE["num_attention_heads"] + 2 * SHAPE["num_key_value_heads"]) * head_dim
    assert state["model.layers.0.attention.wqkv.weight"].shape == (qkv_rows, SHAPE["hidden_size"])
    assert torch.equal(state["model.norm.weight"], torch.ones(SHAPE["hidden_size"]))
    assert abs(state["output.weight"].std().item() - 0.02) < 0.002
    assert torch.equal(state["model.tok_embeddings.weight"][0], torch.zeros(SHAPE["hidden_size"]))  # pad row
    biased = _internlm2(bias=True).state_dict()
    assert "model.layers.0.attention.wqkv.bias" in biased and "model.layers.0.attention.wo.bias" in biased
    assert trunk_of(model) is model.model  # rmtrain's RewardModel finds the trunk


def test_save_and_load_through_auto_classes(tmp_path):
    model = _internlm2()
    model.save_pretrained(tmp_path)
    ids = torch.randint(3, SHAPE["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(3))
    causal, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(causal) is InternLM2ForCausalLM
    assert not info["missing_keys"] and not info["unexpected_keys"]
    trunk = AutoModel.from_pretrained(tmp_path)
    assert type(trunk) is InternLM2Model
    with torch.no_grad():
        assert torch.equal(causal.eval()(input_ids=ids).logits, model(input_ids=ids).logits)
        assert torch.equal(trunk.eval()(input_ids=ids).last_hidden_state, model.model(input_ids=ids).last_hidden_state)


def test_downloaded_folder_loads_without_running_its_code(tmp_path, monkeypatch):
    """A folder shaped like the published checkpoint: auto_map names remote files it does not ship."""
    reference = _internlm2()
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["InternLM2ForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
            "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
        },
        "model_type": "internlm2",
        "attn_implementation": "eager",
        "bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "rope_theta": 1000000,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.41.0",
        "use_cache": True,
        **SHAPE,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert not (tmp_path / "modeling_internlm2.py").exists()

    import transformers.dynamic_module_utils as dynamic
    import transformers.models.auto.auto_factory as auto_factory
    import transformers.models.auto.configuration_auto as configuration_auto

    def refuse(*args, **kwargs):
        raise AssertionError("tried to load code from the folder")

    for module in (dynamic, auto_factory, configuration_auto):
        monkeypatch.setattr(module, "get_class_from_dynamic_module", refuse)

    trunk, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(trunk) is InternLM2Model and not info["missing_keys"]
    causal, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(causal) is InternLM2ForCausalLM
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert causal.config.rope_scaling == {"type": "dynamic", "factor": 2.0}
    loaded = causal.state_dict()
    for name, tensor in state.items():
        assert torch.equal(loaded[name].to(torch.bfloat16), tensor), name


# ---------------------------------------------------------------------------------------------
# Reward model


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write the word 'river' in capital letters, please."},
        {"role": "assistant", "content": "Well, there are many ways to write it, and RIVER is one of them."},
    ],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_demo_tokenizer()


@pytest.fixture(scope="module")
def reward_model():
    torch.manual_seed(0)
    config = InternLM2Config(**{**SHAPE, "vocab_size": 1024}, bias=False, reward_token_id=REWARD)
    model = InternLM2ForRewardModel(config).float().eval()
    with torch.no_grad():
        model.v_head.weight.copy_(torch.randn(model.v_head.weight.shape, generator=torch.Generator().manual_seed(5)))
    return model


def _capture_input_ids(model):
    seen = []
    handle = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True
    )
    return seen, handle


def test_get_score_appends_reward_token_once(reward_model, tokenizer):
    seen, handle = _capture_input_ids(reward_model)
    try:
        score = reward_model.get_score(tokenizer, CONVERSATIONS[0])
        ending_with_reward = copy.deepcopy(tokenizer)
        ending_with_reward.chat_template = DEMO_CHAT_TEMPLATE + "<|reward|>"
        score_again = reward_model.get_score(ending_with_reward, CONVERSATIONS[0])
    finally:
        handle.remove()
    assert isinstance(score, float)
    plain = tokenizer.encode(
        tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=False),
        add_special_tokens=False,
    )
    assert plain[-1] != REWARD
    assert seen[0].tolist() == [plain + [REWARD]]
    assert seen[1].tolist() == [plain + [REWARD]]  # already ended with it: not appended again
    assert score_again == score


def test_get_scores_is_padding_invariant(reward_model, tokenizer):
    lengths = [len(reward_model._encode(tokenizer, c)) for c in CONVERSATIONS]
    assert len(set(lengths)) == len(lengths)
    scores = reward_model.get_scores(tokenizer, CONVERSATIONS)
    alone = [reward_model.get_score(tokenizer, c) for c in CONVERSATIONS]
    assert isinstance(scores, list) and len(scores) == len(CONVERSATIONS)
    assert max(abs(a - b) for a, b in zip(scores, alone)) < TOL
    single = reward_model.get_scores(tokenizer, CONVERSATIONS[1])
    assert isinstance(single, float) and abs(single - alone[1]) < TOL
    assert len(set(round(s, 4) for s in alone)) == len(alone)  # the random head separates them


def test_compare_and_rank(reward_model, tokenizer):
    s = [reward_model.get_score(tokenizer, c) for c in CONVERSATIONS]
    assert reward_model.compare(tokenizer, CONVERSATIONS[0], CONVERSATIONS[1]) == (s[0] > s[1])
    assert reward_model.compare(tokenizer, CONVERSATIONS[1], CONVERSATIONS[0]) == (s[1] > s[0])
    better, pair = reward_model.compare(tokenizer, CONVERSATIONS[0], CONVERSATIONS[1], return_logits=True)
    assert better == (s[0] > s[1]) and len(pair) == 2
    assert abs(pair[0] - s[0]) < TOL and abs(pair[1] - s[1]) < TOL
    expected = sorted(range(len(s)), key=lambda i: -s[i])
    assert reward_model.rank(tokenizer, CONVERSATIONS) == expected
    order, scores = reward_model.rank(tokenizer, CONVERSATIONS, return_logits=True)
    assert order == expected and max(abs(a - b) for a, b in zip(scores, s)) < TOL


def test_forward_reads_last_attended_token(reward_model):
    rows = [[1, 40, 41, 42, 43, 44, 2, REWARD], [1, 50, 2, REWARD]]
    width = max(map(len, rows))
    right = torch.zeros(2, width, dtype=torch.long)
    right_mask = torch.zeros_like(right)
    left, left_mask = right.clone(), right_mask.clone()
    for i, row in enumerate(rows):
        right[i, : len(row)], right_mask[i, : len(row)] = torch.tensor(row), 1
        left[i, width - len(row) :], left_mask[i, width - len(row) :] = torch.tensor(row), 1
    with torch.no_grad():
        alone = torch.cat([reward_model(input_ids=torch.tensor([r])).logits for r in rows])
        for ids, mask in ((right, right_mask), (left, left_mask)):
            out = reward_model(input_ids=ids, attention_mask=mask).logits
            assert out.shape == (2, 1) and out.dtype == torch.float32
            hidden = reward_model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = mask.cumsum(-1).argmax(-1)
            manual = reward_model.v_head(hidden[torch.arange(2), last])
            assert torch.allclose(out, manual, atol=1e-6, rtol=0)
            assert (out - alone).abs().max() < TOL
            assert torch.isfinite(hidden).all()


# ---------------------------------------------------------------------------------------------
# Standalone remote code: the exported folder loads where rmtrain is never imported.


_STANDALONE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModel, AutoTokenizer
    folder, conversations = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    print(json.dumps({
        "scores": model.get_scores(tokenizer, conversations),
        "module": type(model).__module__,
        "class": type(model).__name__,
        "reward_token_id": model.config.reward_token_id,
        "rmtrain_imported": any(name.split(".")[0] == "rmtrain" for name in sys.modules),
    }))
    """
)


@pytest.mark.slow
def test_exported_folder_runs_as_remote_code_without_rmtrain(reward_model, tokenizer, tmp_path):
    folder = tmp_path / "export"
    reward_model.config.auto_map = {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModel": "modeling_internlm2.InternLM2ForRewardModel",
    }
    try:
        reward_model.save_pretrained(folder)
    finally:
        del reward_model.config.auto_map
    tokenizer.save_pretrained(folder)
    for path in INTERNLM2_MODELING_FILES:
        shutil.copy(path, folder)
    expected = reward_model.get_scores(tokenizer, CONVERSATIONS)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", _STANDALONE_SCRIPT, str(folder), json.dumps(CONVERSATIONS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rmtrain_imported"] is False
    assert report["class"] == "InternLM2ForRewardModel" and report["reward_token_id"] == REWARD
    assert report["module"].startswith("transformers_modules")
    assert max(abs(a - b) for a, b in zip(report["scores"], expected)) < TOL


# ---------------------------------------------------------------------------------------------
# Activation checkpointing


def test_activation_checkpointing_gives_same_gradients():
    base = _internlm2(seed=4)
    ids = torch.randint(3, SHAPE["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0

    def gradients(model):
        model.train()
        calls = []
        handle = model.model.layers[0].attention_norm.register_forward_hook(lambda *a: calls.append(1))
        try:
            loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            loss.backward()
        finally:
            handle.remove()
        return {n: p.grad.clone() for n, p in model.named_parameters()}, len(calls)

    plain_grads, plain_calls = gradients(copy.deepcopy(base))
    checkpointed = copy.deepcopy(base)
    checkpointed.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    ckpt_grads, ckpt_calls = gradients(checkpointed)
    assert all(layer.gradient_checkpointing for layer in checkpointed.model.layers)
    assert (plain_calls, ckpt_calls) == (1, 2)  # the layer really was recomputed in backward
    assert plain_grads.keys() == ckpt_grads.keys()
    for name in plain_grads:
        assert (plain_grads[name] - ckpt_grads[name]).abs().max() < TOL, name

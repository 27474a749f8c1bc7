"""Tests for rmtrain.model.reward_model.RewardModel on a tiny randomly initialised Llama trunk."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from rmtrain.data.collate import preference_collate_fn
from rmtrain.errors import ConfigError
from rmtrain.model.losses import log_barrier_penalty, ranking_loss
from rmtrain.model.reward_model import RewardModel
from rmtrain.scoring import pad_sequences

TINY_LLAMA_KWARGS = dict(
    vocab_size=1024,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)

REWARD = 3
# Rows of different lengths, each ending with the reward token; no pad id (0) inside.
ROWS = [
    [1, 40, 41, 42, 43, 44, 45, 2, REWARD],
    [1, 50, 51, 2, REWARD],
    [1, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 2, REWARD],
    [1, 70, 2, REWARD],
]


def _rm(llm, **kwargs):
    kwargs.setdefault("reward_token_id", REWARD)
    kwargs.setdefault("use_activation_checkpointing", False)
    return RewardModel(llm=llm, **kwargs).float().eval()


def _randomize_head(rm, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rm.v_head.weight.copy_(torch.randn(rm.v_head.weight.shape, generator=generator))


def _batch(rows):
    ids, mask = pad_sequences(rows, pad_token_id=0)
    return {"input_ids": ids, "attention_mask": mask}


def test_v_head_zero_at_init_gives_zero_scores(tiny_llama):
    rm = _rm(tiny_llama, value_head_init="zeros")
    assert rm.v_head.weight.shape == (1, 32)
    assert torch.count_nonzero(rm.v_head.weight) == 0
    assert rm.v_head.bias is None
    scores = rm.score(_batch(ROWS))
    assert scores.shape == (len(ROWS),)
    assert scores.dtype == torch.float32
    assert torch.equal(scores, torch.zeros(len(ROWS)))


def test_v_head_default_init_is_normal_with_the_trunk_initializer_range(tiny_llama):
    torch.manual_seed(0)
    rm = _rm(tiny_llama)
    std = tiny_llama.config.initializer_range
    weight = rm.v_head.weight.detach()
    assert torch.count_nonzero(weight) == weight.numel()
    # 32 draws of normal(0, std): their spread is std within a factor that 32 samples allow
    assert 0.5 * std < weight.std().item() < 1.5 * std
    scores = rm.score(_batch(ROWS))
    assert torch.count_nonzero(scores) == len(ROWS)  # scores differ from 0 before any training


def test_v_head_init_follows_the_seed_and_the_initializer_range(tiny_llama):
    torch.manual_seed(3)
    a = _rm(tiny_llama).v_head.weight.detach().clone()
    torch.manual_seed(3)
    b = _rm(tiny_llama).v_head.weight.detach().clone()
    assert torch.equal(a, b)
    tiny_llama.config.initializer_range = 0.5
    torch.manual_seed(3)
    wide = _rm(tiny_llama).v_head.weight.detach()
    torch.testing.assert_close(wide, a * (0.5 / 0.02), rtol=1e-5, atol=1e-7)  # the same draws, scaled


def test_v_head_init_unknown_value_is_a_config_error(tiny_llama):
    with pytest.raises(ConfigError, match="value_head_init must be one of"):
        _rm(tiny_llama, value_head_init="xavier")


def test_padded_batch_scores_equal_unpadded_rows(tiny_llama):
    rm = _rm(tiny_llama)
    _randomize_head(rm)
    with torch.no_grad():
        batch = rm.score(_batch(ROWS))
        alone = torch.cat([rm.score(_batch([row])) for row in ROWS])
    assert torch.count_nonzero(alone) == len(ROWS)
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)


def test_score_read_at_last_real_token_not_padding(tiny_llama):
    rm = _rm(tiny_llama)
    _randomize_head(rm)
    batch = _batch(ROWS)
    with torch.no_grad():
        hidden = rm.model(**batch).last_hidden_state
        scores = rm.score(batch)
        last_real = torch.stack([hidden[i, len(row) - 1] for i, row in enumerate(ROWS)])
        at_end = hidden[:, -1]
    torch.testing.assert_close(scores, (last_real @ rm.v_head.weight.T).squeeze(-1), atol=1e-5, rtol=0)
    # rows shorter than the longest would score differently if read at the end (a pad position)
    short = [i for i, row in enumerate(ROWS) if len(row) < batch["input_ids"].shape[1]]
    assert not torch.allclose(scores[short], (at_end[short] @ rm.v_head.weight.T).squeeze(-1), atol=1e-4)


def test_predict_mode_returns_pair_scores(tiny_llama):
    rm = _rm(tiny_llama)
    _randomize_head(rm)
    batch = _batch(ROWS)  # rows: the chosen sides of the pairs, then their rejected sides
    with torch.no_grad():
        predicted = rm(batch, mode="predict")
        scores = rm.score(batch).tolist()
    half = len(ROWS) // 2
    assert predicted == [{"chosen_score": c, "rejected_score": r} for c, r in zip(scores[:half], scores[half:])]


def _pairs_batch(margins=None):
    chosen, rejected = ROWS[:2], ROWS[2:]
    instances = [
        {"chosen_ids": c, "rejected_ids": r, "margin": None if margins is None else margins[i]}
        for i, (c, r) in enumerate(zip(chosen, rejected))
    ]
    return preference_collate_fn(instances, pad_token_id=0)["data"]


def test_loss_mode_outputs(tiny_llama):
    rm = _rm(tiny_llama, penalty_type="log_barrier", penalty_weight=0.01)
    _randomize_head(rm)
    data = _pairs_batch(margins=[0.5, None])
    out = rm(data, mode="loss")
    assert set(out) == {"loss", "acc", "chosen_score_mean", "rejected_score_mean", "num_samples", "num_tokens"}
    assert out["num_samples"].item() == 2
    assert out["num_tokens"].item() == data["attention_mask"].sum().item()
    assert out["num_tokens"].item() == sum(len(row) for row in ROWS)
    assert out["num_tokens"].item() < data["attention_mask"].numel()  # padding is not counted
    with torch.no_grad():
        scores = rm.score(data)
    chosen, rejected = scores[:2], scores[2:]
    margin = torch.tensor([0.5, 0.0])
    expected = ranking_loss(chosen, rejected, margin).mean() + 0.01 * log_barrier_penalty(scores).sum() / 2
    torch.testing.assert_close(out["loss"].detach(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["chosen_score_mean"], chosen.mean(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["rejected_score_mean"], rejected.mean(), atol=1e-5, rtol=0)
    assert out["acc"].item() == pytest.approx((chosen > rejected).float().mean().item())


def test_loss_mode_focal_no_penalty(tiny_llama):
    rm = _rm(tiny_llama, loss_type="focal", penalty_type="none")
    _randomize_head(rm)
    data = _pairs_batch()
    out = rm(data, mode="loss")
    with torch.no_grad():
        scores = rm.score(data)
    from rmtrain.model.losses import focal_ranking_loss

    torch.testing.assert_close(
        out["loss"].detach(), focal_ranking_loss(scores[:2], scores[2:]).mean(), atol=1e-6, rtol=1e-5
    )


def test_ties_count_as_wrong(tiny_llama):
    rm = _rm(tiny_llama, value_head_init="zeros")  # zero head: every score is 0, every pair a tie
    out = rm(_pairs_batch(), mode="loss")
    assert out["acc"].item() == 0.0
    assert out["chosen_score_mean"].item() == 0.0 and out["rejected_score_mean"].item() == 0.0


def test_acc_counts_wins(tiny_llama):
    rm = _rm(tiny_llama)
    _randomize_head(rm)
    data = _pairs_batch()
    with torch.no_grad():
        scores = rm.score(data)
        out = rm(data, mode="loss")
    wins = (scores[:2] > scores[2:]).float().mean().item()
    assert out["acc"].item() == wins
    with torch.no_grad():
        rm.v_head.weight.neg_()
        flipped = rm(data, mode="loss")
    assert flipped["acc"].item() == pytest.approx(1.0 - wins)


def test_gradients_reach_head_and_trunk(tiny_llama):
    rm = _rm(tiny_llama).train()
    _randomize_head(rm)
    out = rm(_pairs_batch(), mode="loss")
    assert out["loss"].requires_grad
    out["loss"].backward()
    assert rm.v_head.weight.grad is not None and rm.v_head.weight.grad.abs().sum() > 0
    embed = rm.model.get_input_embeddings().weight
    assert embed.grad is not None and embed.grad.abs().sum() > 0
    layer_grads = [p.grad for p in rm.model.layers[0].parameters()]
    assert all(g is not None for g in layer_grads)
    assert any(g.abs().sum() > 0 for g in layer_grads)


def test_gradients_with_activation_checkpointing(tiny_llama):
    rm = _rm(tiny_llama, use_activation_checkpointing=True).train()
    _randomize_head(rm)
    rm(_pairs_batch(), mode="loss")["loss"].backward()
    assert rm.model.layers[1].self_attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("token_id", [1024, 4096])
def test_reward_token_outside_embeddings_raises(tiny_llama, token_id):
    with pytest.raises(ConfigError, match=f"reward_token_id={token_id}"):
        _rm(tiny_llama, reward_token_id=token_id)


def test_reward_token_none_or_xtuners_minus_one_mean_no_token(tiny_llama):
    assert _rm(tiny_llama, reward_token_id=None).reward_token_id is None
    assert _rm(tiny_llama, reward_token_id=-1).reward_token_id is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(loss_type="hinge"), "loss_type"),
        (dict(penalty_type="l1"), "penalty_type"),
    ],
)
def test_bad_options_raise(tiny_llama, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _rm(tiny_llama, **kwargs)


def test_causal_lm_keeps_only_trunk(tiny_llama_config):
    torch.manual_seed(0)
    causal = LlamaForCausalLM(tiny_llama_config)
    assert any("lm_head" in name for name, _ in causal.named_parameters())
    rm = _rm(causal)
    assert isinstance(rm.model, LlamaModel)
    names = [name for name, _ in rm.named_parameters()]
    assert not any("lm_head" in name for name in names)
    assert "v_head.weight" in names
    assert rm.model.config.use_cache is False
    scores = rm.score(_batch(ROWS[:2]))
    assert scores.shape == (2,)


def test_llm_from_config_dict():
    llm = dict(type=LlamaModel, config=dict(type=LlamaConfig, **TINY_LLAMA_KWARGS))
    rm = _rm(llm)
    assert isinstance(rm.model, LlamaModel)
    assert rm.model.config.hidden_size == 32
    assert rm.model.get_input_embeddings().num_embeddings == 1024
    assert rm.v_head.in_features == 32
    assert rm.score(_batch(ROWS)).shape == (len(ROWS),)


def _compile_pair_model(compile_trunk, packed: bool) -> RewardModel:
    torch.manual_seed(0)  # the same trunk and head in both arms
    trunk = LlamaModel(LlamaConfig(**TINY_LLAMA_KWARGS, attn_implementation="sdpa"))
    return RewardModel(
        trunk, use_varlen_attn=packed, use_activation_checkpointing=False, compile_trunk=compile_trunk
    ).train()


# aot_eager traces forward and backward as inductor does, without generating code: seconds instead of the
# minute inductor's C++ build takes per test. The default (inductor) passed this test on both batch kinds
# when it was written (the padded one took 66 s on 2 cores); docs/benchmarks.md has its speed.
@pytest.mark.slow  # dynamo and AOTAutograd: about 13 s per batch kind
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_compiled_trunk_trains_and_scores_like_the_eager_one_and_keeps_its_checkpoint_keys(packed):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    eager = _compile_pair_model(False, packed)
    compiled = _compile_pair_model(dict(backend="aot_eager"), packed)
    assert compiled.model._compiled_call_impl is not None  # compiled in place: the same module, same keys
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints and export read the same keys
    pairs = [
        {"chosen_ids": ROWS[0], "rejected_ids": ROWS[1]},
        {"chosen_ids": ROWS[2], "rejected_ids": ROWS[3]},
    ]
    batch = (
        preference_collate_fn([pairs], use_varlen_attn=True) if packed else preference_collate_fn(pairs, pad_token_id=0)
    )["data"]
    counters.clear()
    losses = []
    for model in (eager, compiled):
        loss = model(batch, mode="loss")["loss"]
        loss.backward()
        losses.append(loss)
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled arm ran through dynamo, not eagerly
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    for (name, a), (_, b) in zip(compiled.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():  # validation: eval mode, no grad (a second graph)
        torch.testing.assert_close(compiled.eval().score(batch), eager.eval().score(batch), atol=1e-5, rtol=1e-5)


def test_compiled_trunk_is_refused_with_sequence_parallelism(monkeypatch):
    import rmtrain.model.reward_model as reward_model

    monkeypatch.setattr(reward_model, "sequence_parallel_size", lambda: 2)
    with pytest.raises(ConfigError, match="compile_trunk"):
        _compile_pair_model(True, packed=False)

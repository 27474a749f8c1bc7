"""The attention kernel follows where the model runs and its dtype, not whether a GPU is visible;
InternLM2 declares flash-attention support; packed offsets reach the host once per forward pass.

flash-attn needs a GPU: its function is stubbed (with per-sequence SDPA standing in for the kernel)
and the device checks are mocked, so the tests assert what flash-attn would receive.
"""

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaModel

from rmtrain.model import RewardModel, packed_attention
from rmtrain.model.internlm2 import InternLM2Config, InternLM2Model
from rmtrain.model.packed_attention import FLASH, PACKED_SDPA, SDPA, packed_attention_kernel
from rmtrain.scoring import pack_sequences, score_sequences

SHAPE = dict(
    vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128,
)  # fmt: skip
SEQUENCES = [[5, 6, 7, 8, 3], [9, 10, 3], [11, 12, 13, 14, 15, 16, 3]]


def _trunk(family: str):
    torch.manual_seed(0)
    if family == "llama":
        return LlamaModel(LlamaConfig(**SHAPE, attn_implementation="sdpa")).float()
    return InternLM2Model(InternLM2Config(**SHAPE, bias=False)).float()


@pytest.fixture
def gpu_with_flash_attn(monkeypatch):
    """A visible GPU of compute capability (8, 0) and flash-attn "installed"; set `capability` to change it."""
    state = {"capability": (8, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(packed_attention, "flash_attn_installed", lambda: True)
    monkeypatch.setattr(packed_attention, "_cuda_capability", lambda index: state["capability"])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a)
    )
    return state


@pytest.mark.parametrize(
    ("device", "dtype", "capability", "kernel"),
    [
        ("cuda:0", torch.bfloat16, (8, 0), FLASH),
        ("cuda:0", torch.float16, (9, 0), FLASH),
        ("cuda:0", torch.float32, (8, 0), SDPA),  # flash-attn has no fp32
        ("cuda:0", torch.float16, (7, 0), SDPA),  # V100: flash-attn 2 needs compute capability 8
        ("cpu", torch.bfloat16, (8, 0), SDPA),  # `rmtrain convert` on a GPU machine keeps the model here
        ("cpu", torch.float32, (8, 0), SDPA),
    ],
)
def test_kernel_follows_device_dtype_and_gpu_generation(gpu_with_flash_attn, device, dtype, capability, kernel):
    gpu_with_flash_attn["capability"] = capability
    assert packed_attention_kernel(torch.device(device), dtype) == kernel


def test_no_flash_kernel_without_the_package(monkeypatch):
    monkeypatch.setattr(packed_attention, "flash_attn_installed", lambda: False)
    assert packed_attention_kernel(torch.device("cuda:0"), torch.bfloat16) == SDPA


@pytest.mark.parametrize("family", ["llama", "internlm2"])
def test_a_packed_model_built_on_a_gpu_machine_scores_on_the_cpu(gpu_with_flash_attn, family):
    # Built where CUDA is visible and flash-attn installed, but run on the CPU in fp32 (as convert does):
    # it must not have been switched to flash_attention_2, which would hand CPU tensors to the kernel.
    model = RewardModel(_trunk(family), reward_token_id=3, use_varlen_attn=True, use_activation_checkpointing=False)
    assert model.model.config._attn_implementation == PACKED_SDPA
    with torch.no_grad():
        scores = model.score(pack_sequences(SEQUENCES))
    assert scores.shape == (len(SEQUENCES),) and torch.isfinite(scores).all()


def _stub_flash(monkeypatch, received: list):
    """flash_varlen replaced by per-sequence SDPA on what it receives ([total, heads, dim])."""

    def stub(query, key, value, cu_seq_lens, max_seq_len, dropout, scaling):
        received.append(dict(dtype=query.dtype, device=query.device, shape=tuple(query.shape),
                             kv_shape=tuple(key.shape), cu_seq_lens=cu_seq_lens, max_seq_len=max_seq_len))  # fmt: skip
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        bounds = cu_seq_lens.tolist()
        outputs = [
            F.scaled_dot_product_attention(
                *(t[start:end].transpose(0, 1) for t in (query, key, value)), is_causal=True, scale=scaling
            ).transpose(0, 1)
            for start, end in zip(bounds, bounds[1:])
        ]
        return torch.cat(outputs)

    monkeypatch.setattr(packed_attention, "flash_varlen", stub)


@pytest.mark.parametrize("family", ["llama", "internlm2"])
def test_flash_receives_the_autocast_dtype_and_the_offsets(monkeypatch, family):
    # The device check is forced open so the CPU stands in for the GPU.
    monkeypatch.setattr(
        packed_attention, "packed_attention_kernel", lambda device, dtype: FLASH if dtype != torch.float32 else SDPA
    )
    received = []
    _stub_flash(monkeypatch, received)
    model = RewardModel(_trunk(family), reward_token_id=3, use_varlen_attn=True, use_activation_checkpointing=False)
    batch = pack_sequences(SEQUENCES)
    with torch.no_grad():
        reference = model.score(batch)  # fp32: per-sequence SDPA, flash never called
        assert received == []
        with torch.autocast("cpu", dtype=torch.bfloat16):
            scores = model.score(batch)
    assert len(received) == SHAPE["num_hidden_layers"]
    total = sum(map(len, SEQUENCES))
    for call in received:
        assert call["dtype"] == torch.bfloat16 and call["device"].type == "cpu"
        assert call["shape"] == (total, 8, 8) and call["kv_shape"] == (total, 2, 8)
        assert call["cu_seq_lens"].dtype == torch.int32 and call["cu_seq_lens"].tolist() == [0, 5, 8, 15]
        assert call["max_seq_len"] == 7
    assert (scores - reference).abs().max() < 5e-2


def test_offsets_reach_the_host_once_per_forward(monkeypatch):
    # With activation checkpointing each layer runs twice; none of them copies the offsets to the host.
    model = RewardModel(_trunk("llama"), reward_token_id=3, use_varlen_attn=True, use_activation_checkpointing=True)
    model.train()
    batch = pack_sequences(SEQUENCES)
    assert batch["attention_buckets"]["widths"] == (7,)  # lengths 5, 3, 7: one bucket, padded to 7
    calls = []
    real_tolist = torch.Tensor.tolist

    def counting_tolist(self):
        calls.append(tuple(self.shape))
        return real_tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    scores = score_sequences(model.model, model.v_head, batch)
    scores.sum().backward()
    assert calls == []


def test_internlm2_switches_to_flash_attention_2_failing_only_for_the_missing_package():
    model = InternLM2Model(InternLM2Config(**SHAPE, bias=False))
    if importlib.util.find_spec("flash_attn") is not None:  # a GPU machine with flash-attn: switching works
        model.set_attn_implementation("flash_attention_2")
        assert model.config._attn_implementation == "flash_attention_2"
        return
    with pytest.raises((ImportError, ValueError)) as error:
        model.set_attn_implementation("flash_attention_2")
    message = str(error.value)
    assert "does not support" not in message
    assert "installed" in message  # the package is missing, nothing else

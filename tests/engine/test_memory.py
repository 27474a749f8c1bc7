"""Model-state memory per GPU for every shipped recipe, built on the meta device (no download), and
the start-up check of `rmtrain train` on CUDA (torch.cuda mocked)."""

from types import SimpleNamespace

import pytest
import torch

from rmtrain.config import load_config
from rmtrain.engine import memory
from rmtrain.engine.memory import GIB, count_parameters, estimate, recipe_memory_rows
from rmtrain.engine.train import train
from rmtrain.errors import ConfigError
from rmtrain.recipes import resolve_config

GB80 = 80e9
LLAMA3 = "llama3_8b_instruct_reward_full_ultrafeedback"


@pytest.fixture(scope="module")
def rows():
    return {row["recipe"]: row for row in recipe_memory_rows(GB80, gpus=8)}


def test_every_shipped_recipe_gets_an_estimate(rows):
    assert set(rows) == {
        "tiny_llama_reward_full_demo",
        "smollm2_135m_instruct_reward_full_demo",
        "internlm2_chat_1_8b_reward_full_ultrafeedback",
        "internlm2_chat_1_8b_reward_full_varlenattn_ultrafeedback",
        "internlm2_chat_1_8b_reward_full_varlenattn_jsonl_dataset",
        "qwen2_5_1_5b_instruct_reward_full_ultrafeedback",
        LLAMA3,
        "llama3_8b_instruct_reward_full_varlenattn_ultrafeedback",
        "POLAR_1_8B_full_varlenattn_custom_dataset",
        "POLAR_7B_full_varlenattn_custom_dataset",
        "tiny_llama_reward_lora_demo",
        "tiny_llama_reward_qlora_demo",
        "smollm2_135m_instruct_reward_lora_demo",
        "internlm2_chat_1_8b_reward_qlora_varlenattn_ultrafeedback",
    }
    expected_params = {  # published sizes of the trunks (without LM heads), plus the value head
        "smollm2_135m_instruct_reward_full_demo": 134.5e6,
        "internlm2_chat_1_8b_reward_full_ultrafeedback": 1.70e9,
        "qwen2_5_1_5b_instruct_reward_full_ultrafeedback": 1.54e9,
        LLAMA3: 7.50e9,
        "llama3_8b_instruct_reward_full_varlenattn_ultrafeedback": 7.50e9,
        "POLAR_1_8B_full_varlenattn_custom_dataset": 1.70e9,  # InternLM2-1.8B
        "POLAR_7B_full_varlenattn_custom_dataset": 7.36e9,  # InternLM2-7B
    }
    for name, params in expected_params.items():
        assert rows[name]["params"] == pytest.approx(params, rel=0.01), name


def test_llama3_8b_needs_zero_on_80gb_gpus(rows):
    llama = rows[LLAMA3]
    assert llama["ddp_x8"] > GB80  # ~140 GiB of fp32 weights, gradients and AdamW state per GPU
    assert llama["zero3_x8"] < 0.8 * GB80
    assert llama["launch_x8"] in ("zero2", "zero3")
    assert rows["qwen2_5_1_5b_instruct_reward_full_ultrafeedback"]["launch_x8"] == "ddp"


def test_the_llama3_recipe_says_it_needs_zero():
    text = resolve_config(LLAMA3).read_text()
    assert "Needs DeepSpeed ZeRO" in text and "--deepspeed zero2" in text


def test_zero_stages_partition_what_they_should():
    params = 10**9
    ddp, zero2, zero3 = (estimate(params, launch, 8) for launch in ("ddp", "zero2", "zero3"))
    assert ddp.total == 20 * params
    assert zero2.weights == 2 * params and zero2.grads == 2 * params / 8 and zero2.optimizer == 12 * params / 8
    assert zero3.total == 16 * params / 8
    assert estimate(params, "zero3_offload", 1).total == 2 * params


def _gpu(monkeypatch, total_gb: float):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(total_memory=int(total_gb * 1e9))
    )


def test_train_refuses_llama3_8b_under_ddp_on_an_80gb_gpu_naming_the_launch(monkeypatch, tmp_path):
    _gpu(monkeypatch, 80)
    built = []
    monkeypatch.setattr("rmtrain.engine.train.build", lambda *a, **k: built.append(a))
    with pytest.raises(ConfigError) as error:
        train(str(resolve_config(LLAMA3)), work_dir=str(tmp_path / "work"))
    message = str(error.value)
    assert "7.50B parameters" in message and "on 1 GPU(s)" in message
    assert "--deepspeed zero3_offload" in message
    assert built == []  # refused before the data or the model is built


def test_the_check_passes_zero3_on_8_gpus_and_names_launches_for_ddp(monkeypatch):
    _gpu(monkeypatch, 80)
    cfg = load_config(str(resolve_config(LLAMA3)))
    memory.check_gpu_memory(cfg, "zero3", gpus=8)  # fits: no error
    with pytest.raises(ConfigError, match=r"DDP \(no --deepspeed\) on 8 GPU\(s\).*--deepspeed zero2 \(26\.\d GiB\)"):
        memory.check_gpu_memory(cfg, None, gpus=8)


def test_a_model_of_unknown_architecture_is_not_checked(monkeypatch):
    cfg = load_config(str(resolve_config(LLAMA3)))
    cfg.model.llm.pretrained_model_name_or_path = "someone/unknown-model"
    assert count_parameters(cfg.model) is None
    _gpu(monkeypatch, 1)
    memory.check_gpu_memory(cfg, None, gpus=1)  # nothing to estimate: no error


def test_lora_runs_are_not_refused_by_the_full_training_estimate(monkeypatch):
    _gpu(monkeypatch, 24)  # QLoRA of a 1.8B model on one 24 GB GPU: the full-training estimate (25 GiB) is too big
    cfg = load_config(str(resolve_config("internlm2_chat_1_8b_reward_qlora_varlenattn_ultrafeedback")))
    memory.check_gpu_memory(cfg, None, gpus=1)  # an upper bound for adapters: no error
    full = load_config(str(resolve_config("internlm2_chat_1_8b_reward_full_ultrafeedback")))
    with pytest.raises(ConfigError):
        memory.check_gpu_memory(full, None, gpus=1)


def test_gib_figures_in_the_docs_match_the_tool(rows):
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "en" / "gpu.md").read_text()
    llama = rows[LLAMA3]
    for key in ("ddp_x8", "zero2_x8", "zero3_x8"):
        assert f"{llama[key] / GIB:.1f}" in docs

"""Exported folders score in standard clients as the training model does, with no rmtrain code.

Three tiny models are trained a few steps and exported with --fp32:

- llama: a Llama trunk with a Llama-3-style tokenizer (the template and the tokenizer would both
  add BOS), padded batches, reward token `<|reserved_special_token_0|>`;
- qwen2: a Qwen2 trunk with the Qwen2Tokenizer class, packed training, no reward token (the score is
  read at the template's last token);
- internlm2: the shipped InternLM2 recipe on a tiny local folder, reward token 3.

`standard_clients.py` then scores the same conversations in a fresh process that never imports
rmtrain, the way RewardBench, TRL's GRPO trainer, OpenRLHF and vLLM/SGLang do (see its docstring
for which are the clients' own code and which replicate their calls), with right and left padding;
every client must match the training model's scores within 1e-4.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cli_runner import run_rmtrain
from recipe_variants import recipe_variant
from rmtrain.builder import build
from rmtrain.config import load_config, scoring_inputs
from rmtrain.scoring import encode_conversation, pad_sequences, resolve_chat_template
from style_tokenizers import LLAMA3_STYLE_REWARD_TOKEN_ID, LLAMA3_STYLE_VOCAB_SIZE
from test_convert_internlm2 import make_internlm2_folder, make_ultrafeedback_folder

pytestmark = pytest.mark.slow  # trains in subprocesses

TESTS_DIR = Path(__file__).parent
CLIENTS_SCRIPT = TESTS_DIR / "standard_clients.py"
SMALL = dict(num_pairs=64, batch_size=8, max_epochs=1, save_steps=8, log_interval=1)
TOLERANCE = 1e-4  # fp32 exports

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}],
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 6."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help you today?"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Red."},
    ],
    [
        {"role": "user", "content": "Write the word river in capital letters."},
        {"role": "assistant", "content": "Sure! Here it is, written in capital letters as you asked: RIVER"},
    ],
]


def _variants(folder: Path) -> dict:
    llama = recipe_variant(
        folder, "llama3_style", reward_token_id=LLAMA3_STYLE_REWARD_TOKEN_ID, **SMALL,
        replacements=[
            ("tokenizer = dict(type=build_demo_tokenizer)", "tokenizer = dict(type=llama3_style_tokenizer)"),
            ("from rmtrain.model import RewardModel", "from rmtrain.model import RewardModel\nfrom style_tokenizers import llama3_style_tokenizer"),
            ("vocab_size=1024", f"vocab_size={LLAMA3_STYLE_VOCAB_SIZE}"),
        ],
    )  # fmt: skip
    qwen2 = recipe_variant(
        folder, "qwen2_style_packed", reward_token_id=None, use_varlen_attn=True, max_packed_length=512, **SMALL,
        replacements=[
            ("from transformers import LlamaConfig, LlamaModel", "from transformers import Qwen2Config, Qwen2Model"),
            ("tokenizer = dict(type=build_demo_tokenizer)", "tokenizer = dict(type=qwen2_style_tokenizer)"),
            ("from rmtrain.model import RewardModel", "from rmtrain.model import RewardModel\nfrom style_tokenizers import qwen2_style_tokenizer"),
            ("type=LlamaModel", "type=Qwen2Model"),
            ("type=LlamaConfig", "type=Qwen2Config"),
        ],
    )  # fmt: skip
    model_dir, data_dir = folder / "internlm2-tiny", folder / "ultrafeedback"
    make_internlm2_folder(model_dir)
    make_ultrafeedback_folder(data_dir)
    internlm2 = recipe_variant(
        folder, "internlm2_tiny", recipe="internlm2_chat_1_8b_reward_full_ultrafeedback",
        pretrained_model_name_or_path=str(model_dir), dataset_name_or_path=str(data_dir), reward_token_id=3,
        max_length=96, batch_size=8, accumulative_counts=1, save_steps=8, log_interval=1,
        # The recipe's zero head barely moves in 8 steps: its scores stayed within 3e-4 of 0, about
        # the comparison's tolerance, so any client would have matched them. A random head spreads them.
        value_head_init="normal",
    )  # fmt: skip
    return {"llama": llama, "qwen2": qwen2, "internlm2": internlm2}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{name: (config, checkpoint, exported folder, convert log)}."""
    folder = tmp_path_factory.mktemp("consumers")
    out = {}
    for name, config in _variants(folder).items():
        work_dir = folder / f"work_{name}"
        run_rmtrain("train", config, "--work-dir", work_dir, cwd=folder, pythonpath=TESTS_DIR)
        checkpoint = Path((work_dir / "last_checkpoint").read_text().strip())
        export = folder / f"hf_{name}"
        result = run_rmtrain(
            "convert", "pth_to_hf", config, checkpoint, export, "--fp32", cwd=folder, pythonpath=TESTS_DIR
        )
        out[name] = (config, checkpoint, export, result.stdout + result.stderr)
    return out


def training_scores(config: Path, checkpoint: Path) -> list[float]:
    """The training model (RewardModel + checkpoint) on CONVERSATIONS, through the shared scoring rule."""
    cfg = load_config(str(config))
    model = build(cfg.model)
    model.load_state_dict(torch.load(checkpoint, weights_only=False)["state_dict"])
    model.eval()
    inputs = scoring_inputs(cfg)
    tokenizer = build(cfg.train_dataloader.dataset.tokenizer)
    template = resolve_chat_template(tokenizer, inputs.chat_template)
    ids = [
        encode_conversation(tokenizer, c[:-1], c[-1:], 10**6, inputs.reward_token_id, template).input_ids
        for c in CONVERSATIONS
    ]
    with torch.no_grad():
        return model.score(dict(zip(("input_ids", "attention_mask"), pad_sequences(ids, 0)))).tolist()


def run_clients(folder: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(CLIENTS_SCRIPT), str(folder), json.dumps(CONVERSATIONS)],
        cwd=folder.parent, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["llama", "qwen2", "internlm2"])
def test_standard_clients_score_like_the_training_model(exports, name):
    config, checkpoint, folder, _ = exports[name]
    reference = training_scores(config, checkpoint)
    # A real check: no two conversations' scores lie within the tolerance of each other's matches.
    ordered = sorted(reference)
    assert min(b - a for a, b in zip(ordered, ordered[1:])) > 2 * TOLERANCE, reference
    report = run_clients(folder)
    assert report["rmtrain_imported"] is False

    clients = ["rewardbench_right_padding", "rewardbench_left_padding", "pipeline_default_activation", "trl_grpo"]
    if name != "internlm2":
        clients += ["openrlhf", "vllm_last_token"]
    for client in clients:
        assert report[client] == pytest.approx(reference, abs=TOLERANCE), (client, report[client], reference)

    exported = json.loads((folder / "config.json").read_text())
    if name == "internlm2":
        methods = report["internlm2"]
        assert methods["class"] == "InternLM2ForRewardModel"
        assert methods["get_scores"] == pytest.approx(reference, abs=TOLERANCE)
        assert methods["get_score"] == pytest.approx(reference[0], abs=TOLERANCE)
        assert methods["rank"] == sorted(range(len(reference)), key=lambda i: -reference[i])
        assert methods["compare"] == (reference[0] > reference[1])
    else:
        # OpenRLHF's reward normalisation with the validation statistics `rmtrain convert` wrote.
        mean, std = exported["mean"], exported["std"]
        normalized = [(score - mean) / std for score in reference]
        assert report["openrlhf_normalized"] == pytest.approx(normalized, abs=TOLERANCE / min(std, 1.0))


@pytest.mark.parametrize("name", ["llama", "qwen2", "internlm2"])
def test_exported_config_has_what_servers_read(exports, name):
    config, _, folder, log = exports[name]
    exported = json.loads((folder / "config.json").read_text())
    reward_token_id = scoring_inputs(load_config(str(config))).reward_token_id
    # vLLM's classify pooler and transformers' pipeline: one label, regression, i.e. no sigmoid.
    assert exported["id2label"] == {"0": "LABEL_0"} and exported["label2id"] == {"LABEL_0": 0}
    assert exported["problem_type"] == "regression"
    assert exported["reward_token_id"] == reward_token_id
    head = "v_head" if name == "internlm2" else "score"
    assert exported["value_head_prefix"] == head  # OpenRLHF reads the head under this name
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert f"{head}.weight" in weights.keys()
        assert not any(key.startswith("lm_head") for key in weights.keys())
    if name == "internlm2":
        assert exported["architectures"] == ["InternLM2ForRewardModel"]
        assert (
            exported["auto_map"]["AutoModelForSequenceClassification"] == "modeling_internlm2.InternLM2ForRewardModel"
        )
    else:
        # vLLM (--runner pooling) and SGLang (--is-embedding) serve <Arch>ForSequenceClassification.
        assert exported["architectures"] == [f"{'Llama' if name == 'llama' else 'Qwen2'}ForSequenceClassification"]
        assert exported["pad_token_id"] not in (exported.get("eos_token_id"), reward_token_id, None)
        assert exported["pad_token_id"] < exported["vocab_size"]
        # The demo recipes validate: convert measured the statistics on the held-out split.
        assert exported["normalize_reward"] is False and exported["std"] > 0
        assert "normalisation statistics: mean" in log
        assert "Score normalisation: mean" in (folder / "README.md").read_text()
    assert "as clients do" in log  # the verification scored the folder the clients' way too


@pytest.mark.parametrize("name", ["llama", "internlm2"])
def test_multi_turn_chats_end_with_one_reward_token(exports, name):
    from transformers import AutoTokenizer

    config, _, folder, _ = exports[name]
    reward_token_id = scoring_inputs(load_config(str(config))).reward_token_id
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=name == "internlm2")
    for chat in CONVERSATIONS:
        ids = tokenizer(tokenizer.apply_chat_template(chat, tokenize=False))["input_ids"]
        assert ids[-1] == reward_token_id and ids.count(reward_token_id) == 1
        prompt = tokenizer.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True)
        assert reward_token_id not in tokenizer(prompt)["input_ids"]

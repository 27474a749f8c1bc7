"""The shipped InternLM2 recipe on a tiny local InternLM2-format folder: train, export, reload without rmtrain."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_runner import run_rmtrain
from recipe_variants import recipe_variant
from rmtrain.builder import build
from rmtrain.config import load_config
from rmtrain.data import build_demo_preference_data, build_demo_tokenizer
from rmtrain.model.internlm2 import InternLM2Config, InternLM2ForCausalLM
from rmtrain.scoring import encode_conversation, pad_sequences

pytestmark = pytest.mark.slow  # trains in a subprocess

CONVERSATIONS = [
    [{"role": "user", "content": "What is 4 + 4?"}, {"role": "assistant", "content": "4 + 4 = 8"}],
    [{"role": "user", "content": "What is 4 + 4?"}, {"role": "assistant", "content": "4 + 4 = 9"}],
    [
        {"role": "system", "content": "Be polite."},
        {"role": "user", "content": "Can you help me?"},
        {"role": "assistant", "content": "Of course, I would be glad to help you."},
    ],
]

# Runs in a fresh interpreter that never imports rmtrain: what a PPO trainer or evaluator would do.
LOAD_WITHOUT_RMTRAIN = """
import json, sys
from transformers import AutoModel, AutoTokenizer

model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
chats = json.loads(sys.argv[2])
scores = model.get_scores(tokenizer, chats)
best = model.rank(tokenizer, chats)
print(json.dumps({"class": type(model).__name__, "scores": scores, "rank": best,
                  "compare": model.compare(tokenizer, chats[0], chats[1]), "rmtrain": "rmtrain" in sys.modules}))
"""


def make_internlm2_folder(folder: Path) -> None:
    """A tiny checkpoint laid out like the published internlm2-chat-1_8b-sft folder."""
    config = InternLM2Config(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    InternLM2ForCausalLM(config).save_pretrained(folder)
    build_demo_tokenizer().save_pretrained(folder)
    config_json = json.loads((folder / "config.json").read_text())
    # The published folder names its own remote code; rmtrain must not need (or run) it.
    config_json["auto_map"] = {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config_json))


def make_ultrafeedback_folder(folder: Path) -> None:
    """Generated pairs in the argilla UltraFeedback shape: full chosen/rejected message lists."""
    folder.mkdir()
    with open(folder / "train.jsonl", "w") as out:
        for record in build_demo_preference_data(num_pairs=64, seed=3):
            prompt_text = record["prompt"][-1]["content"]
            out.write(
                json.dumps(
                    {
                        "prompt": prompt_text,
                        "chosen": record["prompt"] + record["chosen"],
                        "rejected": record["prompt"] + record["rejected"],
                    }
                )
                + "\n"
            )


def test_internlm2_recipe_trains_on_a_local_folder_and_exports_a_reward_model(tmp_path):
    model_dir, data_dir = tmp_path / "internlm2-tiny", tmp_path / "ultrafeedback"
    make_internlm2_folder(model_dir)
    make_ultrafeedback_folder(data_dir)

    config = recipe_variant(
        tmp_path, "internlm2_tiny", recipe="internlm2_chat_1_8b_reward_full_ultrafeedback",
        pretrained_model_name_or_path=str(model_dir), dataset_name_or_path=str(data_dir), reward_token_id=3,
        max_length=96, batch_size=8, accumulative_counts=1, save_steps=8, log_interval=1,
    )  # fmt: skip

    cfg = load_config(str(config))
    reward_model = build(cfg.model)
    assert type(reward_model.model).__name__ == "InternLM2Model"

    def run(*args):
        return run_rmtrain(*args, cwd=tmp_path, check=False)

    result = run("train", str(config), "--work-dir", str(tmp_path / "work"))
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / "work" / "iter_8.pth"
    out = tmp_path / "hf"
    result = run("convert", "pth_to_hf", str(config), str(checkpoint), str(out), "--fp32")
    assert result.returncode == 0, result.stderr[-3000:]

    exported_config = json.loads((out / "config.json").read_text())
    assert exported_config["architectures"] == ["InternLM2ForRewardModel"]
    assert exported_config["auto_map"]["AutoModel"] == "modeling_internlm2.InternLM2ForRewardModel"
    assert exported_config["reward_token_id"] == 3
    assert (out / "modeling_internlm2.py").is_file() and (out / "configuration_internlm2.py").is_file()

    # Reference: the training model on the same conversations through the shared scoring rule.
    reward_model.load_state_dict(torch.load(checkpoint, weights_only=False)["state_dict"])
    reward_model.eval()
    tokenizer = build(cfg.train_dataloader.dataset.tokenizer)
    ids = [
        encode_conversation(tokenizer, c[:-1], c[-1:], 512, 3, tokenizer.chat_template).input_ids for c in CONVERSATIONS
    ]
    with torch.no_grad():
        reference = reward_model.score(dict(zip(("input_ids", "attention_mask"), pad_sequences(ids, 0)))).tolist()

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_RMTRAIN, str(out), json.dumps(CONVERSATIONS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    report = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert report["class"] == "InternLM2ForRewardModel" and report["rmtrain"] is False
    assert max(abs(a - b) for a, b in zip(report["scores"], reference)) < 1e-5, (report["scores"], reference)
    assert report["rank"] == sorted(range(3), key=lambda i: -reference[i])
    assert report["compare"] == (reference[0] > reference[1])

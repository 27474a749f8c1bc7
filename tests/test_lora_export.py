"""`rmtrain convert pth_to_hf` of LoRA and QLoRA checkpoints: merged folders reloaded by transformers alone,
adapter folders reloaded by PEFT alone, each in a fresh process, scoring like the training model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_runner import run_rmtrain
from recipe_variants import recipe_variant
from rmtrain.builder import build
from rmtrain.checkpoints import load_model_weights, read_model_state_dict
from rmtrain.config import load_config
from rmtrain.scoring import encode_conversation, pad_sequences

SMALL = dict(num_pairs=64, batch_size=8, max_epochs=1, save_steps=8, log_interval=1, mixed_precision="float32")
RECIPES = {"lora": "tiny_llama_reward_lora_demo", "qlora": "tiny_llama_reward_qlora_demo"}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "3 + 4 = 7"}],
    [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "3 + 4 = 8"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Answer in one word: name a colour."},
        {"role": "assistant", "content": "Well, there are many colours, and I could name quite a few of them."},
    ],
]

# Run in a fresh interpreter: only transformers (merged) or PEFT (adapter), no rmtrain.
FRESH_SCORER = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
folder, kind = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(folder)
if kind == "adapter":
    from peft import AutoPeftModelForSequenceClassification
    model = AutoPeftModelForSequenceClassification.from_pretrained(folder, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    head = model.get_base_model().score.modules_to_save["default"].weight
else:
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    head = model.score.weight
texts = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in json.loads(sys.argv[3])]
batch = tokenizer(texts, padding=True, return_tensors="pt")
with torch.no_grad():
    scores = model.eval()(**batch).logits[:, 0].tolist()
print(json.dumps({"scores": scores, "head_nonzero": int(torch.count_nonzero(head)), "rmtrain": "rmtrain" in sys.modules}))
"""


def fresh_scores(folder: Path, kind: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", FRESH_SCORER, str(folder), kind, json.dumps(CONVERSATIONS)],
        capture_output=True, text=True, timeout=300, cwd=folder.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def training_scores(config: Path, checkpoint: Path, full_precision: bool = False) -> torch.Tensor:
    """The training model (RewardModel + checkpoint) by the shared scoring rule; QLoRA: on the fp32 base."""
    cfg = load_config(str(config))
    model = build(cfg.model)
    load_model_weights(model, read_model_state_dict(str(checkpoint)), str(checkpoint))
    if full_precision:
        model.dequantize_trunk()
    model.float().eval()
    tokenizer = build(cfg.train_dataloader.dataset.tokenizer)
    ids = [
        encode_conversation(
            tokenizer, c[:-1], c[-1:], 512, cfg.model.reward_token_id, tokenizer.chat_template
        ).input_ids
        for c in CONVERSATIONS
    ]
    with torch.no_grad():
        return model.score(dict(zip(("input_ids", "attention_mask"), pad_sequences(ids, 0))))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{kind: (config, checkpoint)}: 8 iterations of the tiny LoRA and QLoRA demos."""
    folder = tmp_path_factory.mktemp("lora_export")
    out = {}
    for kind, recipe in RECIPES.items():
        config = recipe_variant(folder, kind, recipe=recipe, **SMALL)
        run_rmtrain("train", str(config), "--work-dir", str(folder / kind), cwd=folder)
        out[kind] = (config, folder / kind / "iter_8.pth")
    return out


def convert(config: Path, checkpoint: Path, out: Path, *args):
    return run_rmtrain("convert", "pth_to_hf", config, checkpoint, out, "--fp32", *args, cwd=config.parent, check=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, export", [("lora", "merged"), ("lora", "adapter"), ("qlora", "merged"), ("qlora", "adapter")]
)
def test_every_export_reloads_in_a_fresh_process_and_scores_like_training(trained, tmp_path, kind, export):
    config, checkpoint = trained[kind]
    out = tmp_path / export
    result = convert(config, checkpoint, out, *(["--adapter"] if export == "adapter" else []))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "verification: the folder reloaded through" in log
    if export == "adapter":
        assert (out / "adapter_config.json").is_file() and not (out / "config.json").exists()
        assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    else:
        assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    if kind == "qlora":
        assert "QLoRA: the adapters on the base model loaded in full precision" in log

    reloaded = fresh_scores(out, export)
    assert not reloaded["rmtrain"] and reloaded["head_nonzero"] > 0
    # QLoRA exports are full precision: the trained adapters on the fp32 base weights
    reference = training_scores(config, checkpoint, full_precision=kind == "qlora")
    assert torch.count_nonzero(reference) == len(CONVERSATIONS)
    torch.testing.assert_close(torch.tensor(reloaded["scores"]), reference, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_lora_checkpoint_is_a_small_fraction_of_a_full_one(trained, tmp_path):
    config, checkpoint = trained["lora"]
    full = recipe_variant(tmp_path, "full", **SMALL)
    run_rmtrain("train", str(full), "--work-dir", str(tmp_path / "full"), cwd=tmp_path)
    ratio = checkpoint.stat().st_size / (tmp_path / "full" / "iter_8.pth").stat().st_size
    assert ratio < 0.3, ratio


@pytest.mark.slow
def test_convert_against_another_base_model_or_kind_is_refused(trained, tmp_path):
    from transformers import LlamaConfig, LlamaModel

    from rmtrain.assets import TINY_LLAMA_CONFIG, tiny_llama_base

    config, checkpoint = trained["lora"]
    torch.manual_seed(1)
    LlamaModel(LlamaConfig(**TINY_LLAMA_CONFIG)).save_pretrained(tmp_path / "other")
    other = recipe_variant(
        tmp_path, "other", recipe=RECIPES["lora"], **SMALL,
        replacements=[("type=tiny_llama_base_model,", f"type=AutoModel.from_pretrained, pretrained_model_name_or_path={str(tmp_path / 'other')!r},"),
                      ("from peft import LoraConfig", "from peft import LoraConfig\nfrom transformers import AutoModel")],
    )  # fmt: skip
    result = convert(other, checkpoint, tmp_path / "out")
    assert result.returncode == 2
    assert f"trained on base model {tiny_llama_base()}" in result.stderr
    assert f"this config builds {tmp_path / 'other'}" in result.stderr

    full = recipe_variant(tmp_path, "full", **SMALL)
    result = convert(full, checkpoint, tmp_path / "out")
    assert result.returncode == 2 and "holds LoRA adapters" in result.stderr and "config has no lora" in result.stderr

"""`rmtrain convert pth_to_hf`: tiny reward models trained a few steps, exported, reloaded by transformers alone."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from cli_runner import run_rmtrain
from recipe_variants import recipe_variant
from rmtrain.builder import build
from rmtrain.config import load_config
from rmtrain.scoring import encode_conversation, pad_sequences

SMALL = dict(num_pairs=64, batch_size=8, max_epochs=1, save_steps=8, log_interval=1)

TOKENIZERS_MODULE = '''
import json

from transformers import Qwen2Tokenizer

from rmtrain.data import build_demo_tokenizer


def demo_tokenizer_with_eos_pad():
    """Pad token = EOS: the export must give it a dedicated pad token."""
    tokenizer = build_demo_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def demo_vocab_as_qwen2_tokenizer():
    """The demo vocabulary in the tokenizer class AutoTokenizer picks for a Qwen2 model folder."""
    demo = build_demo_tokenizer()
    bpe = json.loads(demo.backend_tokenizer.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe["vocab"], merges=[tuple(pair) for pair in bpe["merges"]], unk_token=None, bos_token=None,
        eos_token="<|im_end|>", pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|reward|>", "<|endoftext|>"],
    )
    tokenizer.chat_template = demo.chat_template
    return tokenizer
'''


def rmtrain(*args, cwd):
    return run_rmtrain(*args, cwd=cwd, check=False)


def demo_variant(folder: Path, name: str, replacements=(), **settings) -> Path:
    return recipe_variant(folder, name, replacements=replacements, **{**SMALL, **settings})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{name: (config, checkpoint)} for a tiny Llama (pad == EOS tokenizer) and a tiny Qwen2."""
    folder = tmp_path_factory.mktemp("convert")
    (folder / "test_tokenizers.py").write_text(TOKENIZERS_MODULE)
    configs = {
        "llama": demo_variant(
            folder,
            "llama_eos_pad",
            replacements=[
                ("tokenizer = dict(type=build_demo_tokenizer)", "tokenizer = dict(type=demo_tokenizer_with_eos_pad)"),
                (
                    "from rmtrain.model import RewardModel",
                    "from rmtrain.model import RewardModel\nfrom test_tokenizers import demo_tokenizer_with_eos_pad",
                ),
            ],
        ),
        "qwen2": demo_variant(
            folder,
            "qwen2",
            replacements=[
                (
                    "from transformers import LlamaConfig, LlamaModel",
                    "from transformers import Qwen2Config, Qwen2Model",
                ),
                ("tokenizer = dict(type=build_demo_tokenizer)", "tokenizer = dict(type=demo_vocab_as_qwen2_tokenizer)"),
                (
                    "from rmtrain.model import RewardModel",
                    "from rmtrain.model import RewardModel\nfrom test_tokenizers import demo_vocab_as_qwen2_tokenizer",
                ),
                ("type=LlamaModel", "type=Qwen2Model"),
                ("type=LlamaConfig", "type=Qwen2Config"),
            ],
        ),
    }
    out = {}
    for name, config in configs.items():
        work_dir = folder / f"work_{name}"
        result = rmtrain("train", str(config), "--work-dir", str(work_dir), cwd=folder)
        assert result.returncode == 0, result.stderr[-3000:]
        out[name] = (config, work_dir / "iter_8.pth")
    return out


def training_scores(config: Path, checkpoint: Path, conversations):
    """Scores from the training-side model (RewardModel + checkpoint) through the shared scoring rule."""
    cfg = load_config(str(config))
    model = build(cfg.model)
    model.load_state_dict(torch.load(checkpoint, weights_only=False)["state_dict"])
    model.eval()
    tokenizer = build(cfg.train_dataloader.dataset.tokenizer)
    ids = [
        encode_conversation(
            tokenizer, c[:-1], c[-1:], 512, cfg.model.reward_token_id, tokenizer.chat_template
        ).input_ids
        for c in conversations
    ]
    with torch.no_grad():
        return model.score(dict(zip(("input_ids", "attention_mask"), pad_sequences(ids, 0)))), ids


CONVERSATIONS = [
    [
        {"role": "user", "content": "Write the word 'river' in capital letters."},
        {"role": "assistant", "content": "RIVER"},
    ],
    [
        {"role": "user", "content": "Write the word 'river' in capital letters."},
        {"role": "assistant", "content": "river"},
    ],
    [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "3 + 4 = 7"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Answer in one word: name a colour."},
        {"role": "assistant", "content": "Well, there are many colours, and I could name quite a few of them for you."},
    ],
]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_export_reloads_with_transformers_alone_and_scores_the_same(trained, tmp_path, name):
    config, checkpoint = trained[name]
    out = tmp_path / "hf"
    result = rmtrain("convert", "pth_to_hf", str(config), str(checkpoint), str(out), "--fp32", cwd=config.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "verification:" in result.stdout + result.stderr
    for file in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "rmtrain_config.py",
        "rmtrain_config.json",
        "README.md",
    ):
        assert (out / file).is_file(), file

    reference, ids = training_scores(config, checkpoint, CONVERSATIONS)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_labels == 1
    assert model.config.reward_token_id == 3
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.pad_token_id not in (tokenizer.eos_token_id, 3)
    assert not torch.equal(model.score.weight, torch.zeros_like(model.score.weight))

    # One padded batch: transformers finds each row's last real token by itself.
    batch, mask = pad_sequences(ids, tokenizer.pad_token_id)
    with torch.no_grad():
        exported = model(input_ids=batch, attention_mask=mask).logits[:, 0]
    assert torch.allclose(exported, reference, atol=1e-5), (exported, reference)

    # The text-classification pipeline on the rendered text (the template writes the reward token) gives
    # the same score; problem_type "regression" means no sigmoid even without function_to_apply.
    scorer = pipeline("text-classification", model=str(out))
    text = tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False)
    assert text.endswith("<|reward|>")
    assert scorer(text)[0]["score"] == pytest.approx(reference[0].item(), abs=1e-5)


@pytest.mark.slow
def test_llama_export_adds_a_dedicated_pad_token_when_pad_is_eos(trained, tmp_path):
    config, checkpoint = trained["llama"]
    assert build(load_config(str(config)).train_dataloader.dataset.tokenizer).pad_token == "<|im_end|>"
    out = tmp_path / "hf"
    assert rmtrain("convert", "pth_to_hf", str(config), str(checkpoint), str(out), cwd=config.parent).returncode == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token == "<|rm_pad|>"
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.get_input_embeddings().num_embeddings > tokenizer.pad_token_id
    assert model.dtype == torch.bfloat16  # the default export precision, verified with its tolerance


@pytest.mark.slow
def test_refuses_checkpoint_without_value_head(trained, tmp_path):
    config, checkpoint = trained["qwen2"]
    state = torch.load(checkpoint, weights_only=False)
    del state["state_dict"]["v_head.weight"]
    bad = tmp_path / "no_head.pth"
    torch.save(state, bad)
    result = rmtrain("convert", "pth_to_hf", str(config), str(bad), str(tmp_path / "out"), cwd=config.parent)
    assert result.returncode == 2
    assert "no trained value head" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_refuses_checkpoint_of_another_model(trained, tmp_path):
    llama_config, _ = trained["llama"]
    _, qwen_checkpoint = trained["qwen2"]
    result = rmtrain(
        "convert", "pth_to_hf", str(llama_config), str(qwen_checkpoint), str(tmp_path / "out"), cwd=llama_config.parent
    )
    assert result.returncode == 2
    assert "does not fit this config's model" in result.stderr
    assert "unexpected" in result.stderr and "self_attn.q_proj.bias" in result.stderr  # Qwen2 has qkv biases
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_refuses_non_empty_save_dir_unless_overwrite(trained, tmp_path):
    config, checkpoint = trained["qwen2"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    result = rmtrain("convert", "pth_to_hf", str(config), str(checkpoint), str(out), cwd=config.parent)
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (out / "keep.txt").read_text() == "user data"
    result = rmtrain("convert", "pth_to_hf", str(config), str(checkpoint), str(out), "--overwrite", cwd=config.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()

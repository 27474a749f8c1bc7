"""XTuner's reward-model recipes, by their names, each trained a few steps on a tiny model built from its own
settings (only sizes, paths and step counts overridden): InternLM2 packed on UltraFeedback-shaped data and on a
local JSONL file in the custom format, Llama-3 packed, and POLAR's reference-conditioned recipes."""

import json
from pathlib import Path

import pytest
import torch

from cli_runner import run_rmtrain
from recipe_variants import recipe_variant
from rmtrain.builder import build
from rmtrain.checkpoints import read_model_state_dict
from rmtrain.config import load_config, scoring_inputs
from rmtrain.data import build_demo_preference_data, build_demo_tokenizer
from rmtrain.model.internlm2 import InternLM2Config, InternLM2ForRewardModel
from style_tokenizers import LLAMA3_STYLE_REWARD_TOKEN_ID, LLAMA3_STYLE_VOCAB_SIZE, llama3_style_tokenizer
from test_convert_internlm2 import make_internlm2_folder, make_ultrafeedback_folder

NUM_PAIRS = 24
SIZE = dict(max_length=96, accumulative_counts=1, save_steps=4, log_interval=1)  # small; nothing else changed


def _trained_pairs(work_dir: Path) -> int:
    (scalars,) = work_dir.glob("*/vis_data/scalars.json")
    return int(sum(json.loads(line).get("num_samples", 0) for line in scalars.read_text().splitlines()))


def _train(config: Path, folder: Path) -> Path:
    work_dir = folder / f"work_{config.stem}"
    run_rmtrain("train", config, "--work-dir", work_dir, cwd=folder)
    assert list(work_dir.glob("iter_*.pth")), "no checkpoint written"
    return work_dir


def _custom_jsonl(path: Path, reference: bool = False) -> Path:
    with open(path, "w") as out:
        for record in build_demo_preference_data(num_pairs=NUM_PAIRS, seed=5):
            if reference:  # the reference answer is the preferred one, worded as the chosen response
                record = dict(record, reference=record["chosen"], wrapper="sft")
            out.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def internlm2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("internlm2") / "internlm2-tiny"
    make_internlm2_folder(folder)
    return folder


# --- the settings, as XTuner ships them ----------------------------------------------------------


@pytest.mark.parametrize(
    "name, lr, accumulative_counts, max_length, loss_type, penalty_type",
    [
        ("internlm2_chat_1_8b_reward_full_varlenattn_ultrafeedback", 2e-5, 16, 2048, "focal", "log_barrier"),
        ("internlm2_chat_1_8b_reward_full_varlenattn_jsonl_dataset", 2e-5, 16, 2048, "focal", "log_barrier"),
        ("llama3_8b_instruct_reward_full_varlenattn_ultrafeedback", 2e-5, 16, 2048, "focal", "log_barrier"),
        ("POLAR_1_8B_full_varlenattn_custom_dataset", 1e-5, 2, 16384, "ranking", "none"),
        ("POLAR_7B_full_varlenattn_custom_dataset", 2e-5, 2, 16384, "ranking", "none"),
    ],
)
def test_recipe_settings_are_xtuners(name, lr, accumulative_counts, max_length, loss_type, penalty_type):
    cfg = load_config(name)
    dataset = cfg.train_dataloader.dataset
    assert dataset.use_varlen_attn is True and cfg.train_dataloader.batch_size == 1
    assert dataset.max_length == max_length and dataset.max_packed_length == 2 * max_length
    assert cfg.optim_wrapper.optimizer.lr == lr
    assert cfg.optim_wrapper.accumulative_counts == accumulative_counts
    assert (cfg.model.loss_type, cfg.model.penalty_type) == (loss_type, penalty_type)
    assert cfg.train_cfg.max_epochs == 1
    if name.startswith("POLAR"):
        assert dataset.is_reference is True and dataset.max_response_length == 4096
        assert scoring_inputs(cfg).is_reference
        assert cfg.optim_wrapper.optimizer.betas == (0.9, 0.95)
        assert cfg.param_scheduler[1].eta_min == pytest.approx(lr * 0.1)
        assert dataset.reward_token_id == 92527
    else:
        assert not scoring_inputs(cfg).is_reference


# --- training a few steps on tiny models --------------------------------------------------------


@pytest.mark.slow
def test_internlm2_varlenattn_ultrafeedback_trains_every_pair_packed(tmp_path, internlm2_folder):
    data = tmp_path / "ultrafeedback"
    make_ultrafeedback_folder(data)  # 64 pairs in argilla's shape
    config = recipe_variant(
        tmp_path, "internlm2_varlen_uf", recipe="internlm2_chat_1_8b_reward_full_varlenattn_ultrafeedback",
        pretrained_model_name_or_path=str(internlm2_folder), dataset_name_or_path=str(data), reward_token_id=3, **SIZE,
    )  # fmt: skip
    work_dir = _train(config, tmp_path)
    assert _trained_pairs(work_dir) == 64  # packed bins: every pair once, none dropped


@pytest.mark.slow
def test_internlm2_varlenattn_jsonl_dataset_trains_on_a_local_file(tmp_path, internlm2_folder):
    data = _custom_jsonl(tmp_path / "mine.jsonl")
    config = recipe_variant(
        tmp_path, "internlm2_varlen_jsonl", recipe="internlm2_chat_1_8b_reward_full_varlenattn_jsonl_dataset",
        pretrained_model_name_or_path=str(internlm2_folder), data_files=[str(data)], reward_token_id=3, **SIZE,
    )  # fmt: skip
    assert _trained_pairs(_train(config, tmp_path)) == NUM_PAIRS


@pytest.mark.slow
def test_llama3_varlenattn_ultrafeedback_trains(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir, data = tmp_path / "llama3-tiny", tmp_path / "ultrafeedback"
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=LLAMA3_STYLE_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        )
    ).save_pretrained(model_dir)  # fmt: skip
    llama3_style_tokenizer().save_pretrained(model_dir)
    make_ultrafeedback_folder(data)
    config = recipe_variant(
        tmp_path, "llama3_varlen_uf", recipe="llama3_8b_instruct_reward_full_varlenattn_ultrafeedback",
        pretrained_model_name_or_path=str(model_dir), dataset_name_or_path=str(data),
        reward_token_id=LLAMA3_STYLE_REWARD_TOKEN_ID, **SIZE,
    )  # fmt: skip
    assert _trained_pairs(_train(config, tmp_path)) == 64


def make_polar_folder(folder: Path) -> torch.Tensor:
    """A tiny pre-trained reference reward model laid out like POLAR-*-Base (trunk + trained v_head); its head."""
    config = InternLM2Config(
        vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, reward_token_id=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = InternLM2ForRewardModel(config)
    torch.nn.init.normal_(model.v_head.weight, std=0.02)  # a head that has been trained: not zero
    model.save_pretrained(folder)
    build_demo_tokenizer().save_pretrained(folder)
    return model.v_head.weight.detach().clone()


POLAR_RECIPES = ("POLAR_1_8B_full_varlenattn_custom_dataset", "POLAR_7B_full_varlenattn_custom_dataset")


@pytest.fixture(scope="module")
def polar_runs(tmp_path_factory):
    """{recipe: (folder, config, work_dir, the pre-trained head)}, each trained once when first asked for."""
    runs = {}

    def run(recipe):
        if recipe not in runs:
            folder = tmp_path_factory.mktemp(recipe)
            head = make_polar_folder(folder / "polar-tiny")
            data = _custom_jsonl(folder / "polar.jsonl", reference=True)
            config = recipe_variant(
                folder, "polar_tiny", recipe=recipe, pretrained_model_name_or_path=str(folder / "polar-tiny"),
                data_files=[str(data)], reward_token_id=3, max_response_length=24, **dict(SIZE, max_length=128),
            )  # fmt: skip
            cfg = load_config(str(config))
            # POLAR's head is fine-tuned, not replaced by zeros
            assert torch.equal(build(cfg.model).v_head.weight, head)
            runs[recipe] = (folder, config, _train(config, folder), head)
        return runs[recipe]

    return run


@pytest.mark.parametrize("recipe", POLAR_RECIPES)
@pytest.mark.slow
def test_polar_recipe_keeps_the_pretrained_head_and_trains_on_reference_data(polar_runs, recipe):
    _folder, _config, work_dir, head = polar_runs(recipe)
    assert _trained_pairs(work_dir) == NUM_PAIRS
    log = next(work_dir.glob("*/*.log")).read_text()
    assert "reference cut in" in log
    checkpoint = Path((work_dir / "last_checkpoint").read_text().strip())
    trained_head = read_model_state_dict(str(checkpoint))["v_head.weight"]
    assert not torch.equal(trained_head, head)  # trained from POLAR's head


@pytest.mark.slow
def test_polar_export_eval_and_serve_score_with_the_reference_rule(polar_runs):
    from rmtrain.serve import RewardScorer

    folder, config, work_dir, _head = polar_runs(POLAR_RECIPES[0])
    checkpoint = Path((work_dir / "last_checkpoint").read_text().strip())
    export = folder / "hf"
    result = run_rmtrain("convert", "pth_to_hf", config, checkpoint, export, "--fp32", cwd=folder)
    assert "by the reference rule" in result.stdout + result.stderr
    assert json.loads((export / "config.json").read_text())["reference_max_response_length"] == 24

    records = [json.loads(line) for line in (folder / "polar.jsonl").read_text().splitlines()]
    outputs = {}
    for name, model, extra in (("folder", export, []), ("checkpoint", checkpoint, ["--config", config])):
        out = folder / f"{name}.jsonl"
        run_rmtrain("eval", model, folder / "polar.jsonl", "--out", out, *extra, cwd=folder)
        outputs[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(outputs["folder"]) == NUM_PAIRS
    for a, b in zip(outputs["folder"], outputs["checkpoint"]):
        assert abs(a["chosen_score"] - b["chosen_score"]) < 1e-4

    # The server: each candidate is the conversation's last message, judged against its reference.
    scorer = RewardScorer(str(export), None, None, normalize=False)
    conversations = [r["prompt"] + r["chosen"] for r in records[:4]]
    sequences, _ = scorer.encode_conversations(conversations, [r["reference"][0]["content"] for r in records[:4]])
    served = scorer.score(sequences)
    for score, row in zip(served, outputs["folder"][:4]):
        assert abs(score - row["chosen_score"]) < 1e-4

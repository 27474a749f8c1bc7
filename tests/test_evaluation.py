"""Preference metrics, the validation metric, and `rmtrain eval` on converted folders and checkpoints.

The models are tiny and untrained (a random value head gives scores that differ from pair to
pair): what is checked is that every way of loading a model scores through the shared rule and
gives the same numbers, not that the model is good.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recipe_variants import recipe_variant
from rmtrain import cli
from rmtrain.builder import build
from rmtrain.config import load_config
from rmtrain.data import build_demo_preference_data, build_demo_tokenizer
from rmtrain.errors import ConfigError, DataError, EvaluationError, RmtrainError
from rmtrain.evaluation import RewardMetric, evaluate_reward_model, preference_metrics
from rmtrain.evaluation.report import summary_path

# A 2-layer, 32-wide version of the demo model: loads and scores in well under a second.
TINY_MODEL = [
    ("hidden_size=128", "hidden_size=32"),
    ("intermediate_size=256", "intermediate_size=64"),
    ("num_hidden_layers=4", "num_hidden_layers=2"),
]


# ---- metrics ----------------------------------------------------------------------------------


def test_metrics_count_a_tie_as_wrong():
    metrics = preference_metrics([1.0, 2.0, 0.5, 3.0], [0.0, 2.0, 1.0, -1.0])
    assert metrics["pairs"] == 4 and metrics["correct"] == 2
    assert metrics["accuracy"] == 0.5  # the tie (2.0 vs 2.0) is wrong
    assert metrics["margin_mean"] == pytest.approx((1 + 0 - 0.5 + 4) / 4)
    assert metrics["chosen_score_mean"] == pytest.approx(6.5 / 4)
    assert metrics["rejected_score_mean"] == pytest.approx(2.0 / 4)
    assert preference_metrics([0.0, 0.0], [0.0, 0.0])["accuracy"] == 0.0  # all alike: 0, not 0.5
    assert metrics["subsets"] == {}


def test_distribution_matches_numpy():
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(1, 2, 101).tolist(), rng.normal(0, 1, 101).tolist()
    metrics = preference_metrics(chosen, rejected)
    scores, margins = np.array(chosen + rejected), np.array(chosen) - np.array(rejected)
    for name, values in (("scores", scores), ("margins", margins)):
        assert metrics[name]["mean"] == pytest.approx(values.mean())
        assert metrics[name]["std"] == pytest.approx(values.std())
        for q in (5, 25, 50, 75, 95):
            assert metrics[name][f"p{q}"] == pytest.approx(np.percentile(values, q))
    one = preference_metrics([2.0], [1.0])
    assert one["scores"]["std"] == pytest.approx(0.5) and one["margins"]["p95"] == 1.0


def test_metrics_per_subset():
    metrics = preference_metrics([1, 1, 0, 5, 2], [0, 2, 0, 1, 1], subsets=["b", "a", "a", "b", "c"])
    assert list(metrics["subsets"]) == ["a", "b", "c"]
    assert metrics["subsets"]["a"] == {"pairs": 2, "correct": 0, "accuracy": 0.0}
    assert metrics["subsets"]["b"] == {"pairs": 2, "correct": 2, "accuracy": 1.0}
    assert metrics["subsets"]["c"]["accuracy"] == 1.0


def test_metrics_refuse_empty_or_mismatched_input():
    with pytest.raises(EvaluationError, match="no pairs to evaluate"):
        preference_metrics([], [])
    with pytest.raises(EvaluationError, match="2 chosen scores but 1 rejected"):
        preference_metrics([1.0, 2.0], [0.0])
    with pytest.raises(EvaluationError, match="subset labels"):
        preference_metrics([1.0], [0.0], subsets=["a", "b"])


def test_reward_metric_reports_val_keys_and_drops_sampler_repeats():
    metric = RewardMetric()
    metric.dataset_meta = {"pairs": 3}  # PreferenceDataset.metainfo
    outputs = [{"chosen_score": 1.0, "rejected_score": 0.0}, {"chosen_score": 0.0, "rejected_score": 0.0}]
    metric.process(None, outputs)
    metric.process(None, [{"chosen_score": 2.0, "rejected_score": 3.0}, {"chosen_score": 9.0, "rejected_score": 0.0}])
    result = metric.evaluate(size=4)
    assert set(result) == set(RewardMetric.reported_keys())
    assert result["val/pairs"] == 3  # the fourth result is a repeat added by the distributed sampler
    assert result["val/accuracy"] == pytest.approx(1 / 3)
    assert result["val/margin_mean"] == pytest.approx((1 + 0 - 1) / 3)
    assert result["val/chosen_score_mean"] == pytest.approx(1.0)
    assert metric.results == []


def test_reward_metric_keeps_every_pair_of_packed_data():
    # A packed data set's items are bins of several pairs: `size` counts bins, not pairs.
    metric = RewardMetric(prefix="holdout")
    metric.process(None, [{"chosen_score": float(i), "rejected_score": 0.0} for i in range(5)])
    result = metric.evaluate(size=2)
    assert result["holdout/pairs"] == 5 and result["holdout/accuracy"] == pytest.approx(4 / 5)


# ---- rmtrain eval -----------------------------------------------------------------------------


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{'config', 'checkpoint', 'folder', 'data'}: a tiny RewardModel with a random value head, saved as a
    training checkpoint and converted (fp32) to a Hugging Face folder; 30 demo pairs with a `category`."""
    from rmtrain.convert import convert_pth_to_hf

    folder = tmp_path_factory.mktemp("eval")
    config = recipe_variant(folder, "tiny", replacements=TINY_MODEL)
    torch.manual_seed(0)
    model = build(load_config(str(config)).model)
    torch.nn.init.normal_(model.v_head.weight, std=1.0)
    checkpoint = folder / "iter_1.pth"
    torch.save({"meta": {"iter": 1}, "state_dict": model.state_dict()}, checkpoint)
    convert_pth_to_hf(str(config), str(checkpoint), str(folder / "hf"), fp32=True)
    data = folder / "pairs.jsonl"
    build_demo_preference_data(num_pairs=30, seed=7).to_json(str(data))
    return {"config": config, "checkpoint": checkpoint, "folder": folder / "hf", "data": data}


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_eval_of_folder_and_checkpoint_agree_and_report_per_category(models, tmp_path, capsys):
    code = cli.main(["eval", str(models["folder"]), str(models["data"]), "--out", str(tmp_path / "hf.jsonl")])
    table = capsys.readouterr().out
    assert code == 0
    summary = evaluate_reward_model(
        str(models["checkpoint"]), str(models["data"]), config=str(models["config"]), out=str(tmp_path / "pth.jsonl")
    )
    folder_rows, checkpoint_rows = _rows(tmp_path / "hf.jsonl"), _rows(tmp_path / "pth.jsonl")
    assert [row["record_index"] for row in folder_rows] == list(range(30))
    for a, b in zip(folder_rows, checkpoint_rows):
        assert a["chosen_score"] == pytest.approx(b["chosen_score"], abs=1e-5)
        assert a["rejected_score"] == pytest.approx(b["rejected_score"], abs=1e-5)
        assert a["subset"] == b["subset"]
        assert a["correct"] == (a["chosen_score"] > a["rejected_score"])
        assert a["margin"] == pytest.approx(a["chosen_score"] - a["rejected_score"])
    assert len({round(row["chosen_score"], 6) for row in folder_rows}) > 1  # a real head, not constant scores

    records = [json.loads(line) for line in models["data"].read_text().splitlines()]
    assert [row["subset"] for row in folder_rows] == [record["category"] for record in records]
    assert summary["subset_field"] == "category"
    assert set(summary["subsets"]) == {"arithmetic", "format", "one_word", "politeness", "uppercase"}
    assert sum(s["pairs"] for s in summary["subsets"].values()) == 30
    assert summary["accuracy"] == sum(row["correct"] for row in checkpoint_rows) / 30
    assert summary["max_length"] == 96 and summary["max_length_from"] == "config"

    saved = json.loads(summary_path(str(tmp_path / "hf.jsonl")).read_text())
    assert saved["accuracy"] == pytest.approx(summary["accuracy"])
    assert saved["max_length_from"] == "rmtrain_config.json"  # the settings the conversion kept as data
    assert "per 'category':" in table and "uppercase" in table
    assert f"accuracy  {summary['accuracy']:.4f}" in table


def test_eval_scores_do_not_depend_on_batch_size(models, tmp_path):
    for batch_size in (1, 8):
        evaluate_reward_model(
            str(models["folder"]),
            str(models["data"]),
            batch_size=batch_size,
            out=str(tmp_path / f"b{batch_size}.jsonl"),
        )
    one, eight = _rows(tmp_path / "b1.jsonl"), _rows(tmp_path / "b8.jsonl")
    for a, b in zip(one, eight, strict=True):
        assert math.isclose(a["chosen_score"], b["chosen_score"], abs_tol=1e-5)
        assert math.isclose(a["rejected_score"], b["rejected_score"], abs_tol=1e-5)


def test_eval_prefers_a_subset_field_and_reads_plain_strings(models, tmp_path):
    data = _write_jsonl(
        tmp_path / "strings.jsonl",
        [
            {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "subset": "greet", "category": "x"},
            {"prompt": "Say bye.", "chosen": "Bye!", "rejected": "Hi!", "subset": "part", "category": "x"},
            {"prompt": "Count to two.", "chosen": "1 2", "rejected": "1", "subset": "greet", "category": "y"},
        ],
    )
    summary = evaluate_reward_model(str(models["folder"]), str(data), max_length=32)
    assert summary["subset_field"] == "subset"
    assert {name: s["pairs"] for name, s in summary["subsets"].items()} == {"greet": 2, "part": 1}
    assert summary["max_length"] == 32 and summary["max_length_from"] == "--max-length"


def test_eval_of_an_internlm2_reward_folder_reads_trunk_and_v_head(tmp_path):
    from rmtrain.model.internlm2 import InternLM2Config, InternLM2ForRewardModel

    config = InternLM2Config(
        vocab_size=1024,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        reward_token_id=3,
    )
    torch.manual_seed(0)
    model = InternLM2ForRewardModel(config).float().eval()
    torch.nn.init.normal_(model.v_head.weight)
    model.save_pretrained(tmp_path / "internlm2_rm")
    tokenizer = build_demo_tokenizer()
    tokenizer.save_pretrained(tmp_path / "internlm2_rm")
    records = list(build_demo_preference_data(num_pairs=6, seed=1))
    data = _write_jsonl(tmp_path / "pairs.jsonl", records)

    summary = evaluate_reward_model(str(tmp_path / "internlm2_rm"), str(data), out=str(tmp_path / "out.jsonl"))
    assert summary["model_class"] == "InternLM2ForRewardModel" and summary["max_length_from"] == "default"
    # The model's own scoring (its forward, reward token appended) gives the same numbers.
    expected = model.get_scores(tokenizer, [r["prompt"] + r["chosen"] for r in records])
    got = [row["chosen_score"] for row in _rows(tmp_path / "out.jsonl")]
    assert got == pytest.approx(expected, abs=1e-5)


def test_eval_refuses_a_folder_without_a_score_head(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "causal_lm"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=1024,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).save_pretrained(folder)
    data = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    code = cli.main(["eval", str(folder), str(data)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{folder} holds no reward model (its config.json names LlamaForCausalLM)" in err
    assert "rmtrain convert pth_to_hf" in err and "Traceback" not in err
    with pytest.raises(EvaluationError, match="no config.json"):
        evaluate_reward_model(str(tmp_path), str(data))


def test_eval_names_the_bad_record(models, tmp_path, capsys):
    good = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}
    data = _write_jsonl(tmp_path / "bad.jsonl", [good, good, {"prompt": "Say yes.", "chosen": "Yes!"}])
    code = cli.main(["eval", str(models["folder"]), str(data)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{data}, record 2, field 'rejected'" in err


def test_eval_refuses_empty_data_and_a_checkpoint_without_config(models, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        evaluate_reward_model(str(models["folder"]), str(empty))
    (tmp_path / "none.json").write_text("[]")
    with pytest.raises(DataError, match="the data set is empty"):
        evaluate_reward_model(str(models["folder"]), str(tmp_path / "none.json"))
    with pytest.raises(ConfigError, match="give the config it was trained with"):
        evaluate_reward_model(str(models["checkpoint"]), str(models["data"]))
    with pytest.raises(RmtrainError, match="data file not found"):
        evaluate_reward_model(str(models["folder"]), str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".parquet", ".csv"])
def test_eval_reads_compressed_parquet_and_csv_files(models, tmp_path, suffix):
    import datasets

    records = [
        {"prompt": f"Say {word}.", "chosen": f"{word}!", "rejected": "No.", "subset": "s"} for word in ("hi", "yes")
    ]
    path = tmp_path / f"pairs{suffix}"
    table = datasets.Dataset.from_list(records)
    {
        ".jsonl.gz": lambda: table.to_json(str(path), compression="gzip"),
        ".parquet": lambda: table.to_parquet(str(path)),
        ".csv": lambda: table.to_csv(str(path), index=False),
    }[suffix]()
    summary = evaluate_reward_model(str(models["folder"]), str(path), map_fn="string_preference_map_fn")
    assert summary["pairs"] == 2 and summary["subsets"] == {
        "s": {"pairs": 2, "correct": summary["correct"], "accuracy": summary["accuracy"]}
    }


# ---- a folder is data, not code ----------------------------------------------------------------------

PAYLOAD = "open({marker!r}, 'w').write('ran')\n"


def _folder_copy(models, tmp_path: Path) -> Path:
    import shutil

    folder = tmp_path / "hf"
    shutil.copytree(models["folder"], folder)
    return folder


def test_eval_never_executes_the_folders_config(models, tmp_path):
    folder = _folder_copy(models, tmp_path)
    marker = tmp_path / "ran"
    config_py = folder / "rmtrain_config.py"
    config_py.write_text(PAYLOAD.format(marker=str(marker)) + config_py.read_text())
    summary = evaluate_reward_model(str(folder), str(models["data"]))
    assert summary["max_length_from"] == "rmtrain_config.json" and summary["max_length"] == 96
    assert not marker.exists()


def test_a_folder_with_only_its_python_config_needs_the_users_consent(models, tmp_path, capsys):
    folder = _folder_copy(models, tmp_path)
    marker = tmp_path / "ran"
    (folder / "rmtrain_config.json").unlink()
    config_py = folder / "rmtrain_config.py"
    config_py.write_text(PAYLOAD.format(marker=str(marker)) + config_py.read_text())
    assert cli.main(["eval", str(folder), str(models["data"])]) == 2
    err = capsys.readouterr().err
    assert "re-export" in err.lower() and "--trust-remote-code" in err
    assert not marker.exists()
    # --max-length gives what the config would: nothing of the folder needs to run.
    assert evaluate_reward_model(str(folder), str(models["data"]), max_length=96)["pairs"] == 30
    assert not marker.exists()
    # The user's explicit consent runs it (the old behaviour).
    summary = evaluate_reward_model(str(folder), str(models["data"]), trust_remote_code=True)
    assert summary["max_length_from"] == "rmtrain_config.py" and marker.exists()


def _internlm2_reward_folder(folder: Path) -> Path:
    from rmtrain.model.internlm2 import InternLM2Config, InternLM2ForRewardModel

    config = InternLM2Config(
        vocab_size=1024,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        reward_token_id=3,
    )
    torch.manual_seed(0)
    InternLM2ForRewardModel(config).save_pretrained(folder)
    build_demo_tokenizer().save_pretrained(folder)
    return folder


def test_an_internlm2_folders_tokenizer_code_does_not_run_without_consent(tmp_path, capsys):
    # InternLM2's published tokenizer is code in the folder; eval used to pass trust_remote_code=True for it.
    folder = _internlm2_reward_folder(tmp_path / "internlm2_rm")
    marker = tmp_path / "ran"
    (folder / "tokenization_internlm2.py").write_text(
        PAYLOAD.format(marker=str(marker))
        + "from transformers import PreTrainedTokenizerFast\n\n\nclass InternLM2TokenizerFast(PreTrainedTokenizerFast):\n"
        "    pass\n"
    )
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.update(
        tokenizer_class="InternLM2TokenizerFast",
        auto_map={"AutoTokenizer": [None, "tokenization_internlm2.InternLM2TokenizerFast"]},
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    data = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    code = cli.main(["eval", str(folder), str(data)])
    err = capsys.readouterr().err
    assert not marker.exists()
    assert code == 0 or "--trust-remote-code" in err  # loaded without the code, or refused saying how to allow it


def test_eval_refuses_a_folder_whose_score_head_is_missing(models, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = _folder_copy(models, tmp_path)
    weights = load_file(folder / "model.safetensors")
    del weights["score.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert cli.main(["eval", str(folder), str(models["data"])]) == 2
    err = capsys.readouterr().err
    assert "score.weight" in err and str(folder) in err

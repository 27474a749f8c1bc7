"""Tests for rmtrain.check_data and `rmtrain check-data`: counts, lengths, batching, the rendered pair, bad data."""

import json
import re

from recipe_variants import recipe_variant
from rmtrain import cli
from rmtrain.check_data import length_table, percentile, render_ids
from rmtrain.data.packing import PACKING_PAYS_FROM_PADDING, favoured_batching

DEMO_DATASET = (
    "demo_data = dict(type=build_demo_preference_data, num_pairs=round(num_pairs / (1 - val_split)), seed=data_seed)"
)


def _check_data(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["check-data", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7], 99) == 7
    rows = length_table([(3, 5), (4, 6)])
    assert rows[0].split() == ["tokens", "p50", "p90", "p99", "max"]
    assert rows[3].split() == ["pair", "total", "8", "10", "10", "10"]


def test_favoured_batching_switches_at_the_measured_padding_share():
    assert favoured_batching(PACKING_PAYS_FROM_PADDING) == "packed"
    assert favoured_batching(PACKING_PAYS_FROM_PADDING - 0.001) == "padded"
    assert favoured_batching(0.0) == "padded" and favoured_batching(0.5) == "packed"


def test_render_ids_marks_the_reward_token(demo_tokenizer):
    ids = demo_tokenizer.encode("hello world", add_special_tokens=False) + [3]
    assert render_ids(demo_tokenizer, ids, 3).endswith("⟦<|reward|>⟧")
    assert "⟦" not in render_ids(demo_tokenizer, ids, None)


def test_check_data_padded(tmp_path, capsys):
    config = recipe_variant(tmp_path, "small", num_pairs=120)
    code, out, _ = _check_data(capsys, config)
    assert code == 0
    assert re.search(r"records read\s+120\b", out) and re.search(r"pairs kept\s+120\b", out)
    assert re.search(r"dropped\s+0\b", out)
    assert "prompt cut from the left in 0 pairs" in out
    assert re.search(r"chosen\s+\d+\s+\d+\s+\d+\s+\d+", out) and "pair total" in out and "p99" in out
    assert re.search(
        r"\d+\.\d% of token slots are padding with random batches, \d+\.\d% with LengthGroupedSampler", out
    )
    grouped = float(re.search(r"(\d+\.\d)% with LengthGroupedSampler", out).group(1)) / 100
    favoured = re.search(r"favours\s+(packed|padded): .*", out)
    assert favoured.group(1) == ("packed" if grouped >= PACKING_PAYS_FROM_PADDING else "padded")
    assert ("as this config does" in favoured.group(0)) == (favoured.group(1) == "padded")
    chosen, rejected = out.split("  chosen (")[1], out.split("  rejected (")[1]
    assert "<|im_start|>assistant" in chosen and chosen.count("⟦<|reward|>⟧") >= 1
    assert "⟦<|reward|>⟧" in rejected
    # The data set summary is logged once while building; the report does not print it again.
    assert "preference data from" not in out.split("train data from")[1]


def test_check_data_packed_and_truncated(tmp_path, capsys):
    config = recipe_variant(tmp_path, "packed", num_pairs=2000, use_varlen_attn=True, max_length=24)
    code, out, _ = _check_data(
        capsys,
        config,
        "--cfg-options",
        "train_dataloader.dataset.dataset.num_pairs=120",
        "train_dataloader.dataset.val_split=0",
    )
    assert code == 0
    assert re.search(r"records read\s+120\b", out)
    assert re.search(r"packed\s+\d+ bins of at most \d+ tokens, no padding", out)
    assert re.search(r"pairs/bin\s+min \d+, mean \d+\.\d, max \d+", out)
    assert re.search(r"favours\s+(packed|padded): length-grouped batches of \d+ pairs", out)
    cut = re.search(r"prompt cut from the left in (\d+) pairs", out)
    assert int(cut.group(1)) > 0
    assert re.search(r"chosen\s+\d+\s+\d+\s+\d+\s+24\b", out)  # max_length caps every sequence


def test_check_data_val_counts(tmp_path, capsys):
    val = (
        "\nval_dataloader = dict(batch_size=4, dataset=dict(train_dataset, val_split=0, "
        "dataset=dict(type=build_demo_preference_data, num_pairs=30, seed=1)))\n"
    )
    config = recipe_variant(tmp_path, "with_val", num_pairs=60, extra=val)
    code, out, _ = _check_data(capsys, config)
    assert code == 0
    assert re.search(r"val data from .*\n\s+records read\s+30\b", out)


def test_check_data_bad_record_names_it(tmp_path, capsys):
    good = {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }
    records = tmp_path / "pairs.jsonl"
    records.write_text(
        "\n".join(json.dumps(r) for r in [good, good, {"prompt": good["prompt"], "chosen": good["chosen"]}])
    )
    config = recipe_variant(
        tmp_path,
        "bad",
        replacements=[
            (DEMO_DATASET, f"demo_data = dict(type='rmtrain.data.load_jsonl_dataset', data_files={str(records)!r})")
        ],
    )
    code, out, err = _check_data(capsys, config)
    assert code != 0
    assert "pairs.jsonl, record 2, field 'rejected'" in err
    assert "records read" not in out


def test_check_data_bad_cfg_option(capsys):
    code, _, err = _check_data(
        capsys, "tiny_llama_reward_full_demo", "--cfg-options", "train_dataloader.dataset.no_such_key=1"
    )
    assert code == 2 and "no_such_key" in err

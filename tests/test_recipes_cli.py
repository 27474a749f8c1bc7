"""Tests for rmtrain.recipes, the `rmtrain` command line (list-cfg, copy-cfg, errors) and rmtrain.config."""

import filecmp
import subprocess
import sys

import pytest

from rmtrain import cli
from rmtrain.errors import ConfigError
from rmtrain.recipes import copy_config, list_configs, resolve_config, shipped_config_dir, shipped_configs

SHIPPED = (
    "smollm2_135m_instruct_reward_full_demo",
    "tiny_llama_reward_full_demo",
    "internlm2_chat_1_8b_reward_full_ultrafeedback",
    "llama3_8b_instruct_reward_full_ultrafeedback",
    "qwen2_5_1_5b_instruct_reward_full_ultrafeedback",
    "internlm2_chat_1_8b_reward_full_varlenattn_ultrafeedback",
    "internlm2_chat_1_8b_reward_full_varlenattn_jsonl_dataset",
    "llama3_8b_instruct_reward_full_varlenattn_ultrafeedback",
    "POLAR_1_8B_full_varlenattn_custom_dataset",
    "POLAR_7B_full_varlenattn_custom_dataset",
    "tiny_llama_reward_lora_demo",
    "tiny_llama_reward_qlora_demo",
    "smollm2_135m_instruct_reward_lora_demo",
    "internlm2_chat_1_8b_reward_qlora_varlenattn_ultrafeedback",
)
TINY = "tiny_llama_reward_full_demo"
OFFLINE = (  # nothing to download
    TINY,
    "smollm2_135m_instruct_reward_full_demo",
    "tiny_llama_reward_lora_demo",
    "tiny_llama_reward_qlora_demo",
    "smollm2_135m_instruct_reward_lora_demo",
)
LOCAL_DATA = tuple(name for name in SHIPPED if "jsonl" in name or "custom" in name)  # the user's own files


# --- recipes -----------------------------------------------------------------------------------


def test_list_configs_has_shipped_names():
    names = list_configs()
    for name in SHIPPED:
        assert name in names
    assert names == sorted(names)
    assert not any(name.startswith("_") for name in names)  # no __init__


def test_shipped_config_paths_exist():
    configs = shipped_configs()
    assert shipped_config_dir().is_dir()
    for name in SHIPPED:
        assert configs[name].is_file()
        assert configs[name].name == f"{name}.py"


@pytest.mark.parametrize("pattern", ["llama", "LLaMA", "LLAMA"])
def test_list_configs_pattern_case_insensitive(pattern):
    names = list_configs(pattern)
    assert set(names) == {
        "tiny_llama_reward_full_demo",
        "tiny_llama_reward_lora_demo",
        "tiny_llama_reward_qlora_demo",
        "llama3_8b_instruct_reward_full_ultrafeedback",
        "llama3_8b_instruct_reward_full_varlenattn_ultrafeedback",
    }


def test_list_configs_pattern_no_match():
    assert list_configs("no-such-recipe") == []


def test_copy_config(tmp_path):
    dest = copy_config(TINY, str(tmp_path / "new_dir"))
    assert dest == tmp_path / "new_dir" / f"{TINY}_copy.py"
    assert dest.is_file()
    assert filecmp.cmp(dest, shipped_configs()[TINY], shallow=False)
    assert dest.read_bytes() == shipped_configs()[TINY].read_bytes()


def test_resolve_config_by_name_and_path(tmp_path):
    assert resolve_config(TINY) == shipped_configs()[TINY]
    path = tmp_path / "my.py"
    path.write_text("x = 1\n")
    assert resolve_config(str(path)) == path


def test_resolve_config_typo_lists_closest():
    with pytest.raises(ConfigError) as info:
        resolve_config("tiny_llama_reward_ful_demo")
    message = str(info.value)
    assert "Closest names" in message
    assert TINY in message
    assert "list-cfg" in message


def test_resolve_config_missing_py_path(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config("does_not_exist.py")
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config(str(tmp_path / "sub" / "cfg"))


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_list_cfg(capsys):
    assert cli.main(["list-cfg"]) == 0
    lines = capsys.readouterr().out.split()
    for name in SHIPPED:
        assert name in lines


def test_cli_list_cfg_pattern(capsys):
    assert cli.main(["list-cfg", "-p", "QWEN"]) == 0
    assert capsys.readouterr().out.split() == ["qwen2_5_1_5b_instruct_reward_full_ultrafeedback"]
    assert cli.main(["list-cfg", "--pattern", "zzz"]) == 0
    assert "no shipped config matches 'zzz'" in capsys.readouterr().out


def test_cli_copy_cfg(tmp_path, capsys):
    assert cli.main(["copy-cfg", TINY, str(tmp_path)]) == 0
    dest = tmp_path / f"{TINY}_copy.py"
    assert dest.is_file()
    assert str(dest) in capsys.readouterr().out


def test_cli_copy_cfg_unknown_name(tmp_path, capsys):
    assert cli.main(["copy-cfg", "nope", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "rmtrain: error:" in captured.err
    assert "'nope'" in captured.err
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_cli_train_slurm_outside_srun_is_a_clear_error(capsys, monkeypatch):
    for name in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODELIST"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["train", TINY, "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "SLURM_PROCID" in err and "srun" in err


def test_cli_train_unknown_deepspeed_config(capsys):
    assert cli.main(["train", TINY, "--deepspeed", "zero9"]) == 2
    assert "zero2, zero2_offload, zero3" in capsys.readouterr().err


def test_cli_train_unknown_config(capsys):
    assert cli.main(["train", "tiny_llama_reward_ful_demo"]) == 2
    assert TINY in capsys.readouterr().err


def test_cli_train_bad_cfg_option(capsys):
    assert cli.main(["train", TINY, "--cfg-options", "optim_wrapper.optimizer.lrr=1e-5"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean: optim_wrapper.optimizer.lr?" in err


def test_cli_needs_a_verb():
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2


def test_parse_cfg_options_literals():
    opts = cli._parse_cfg_options(["a.b=1", "c=1e-5", "d=abc", "e=[1,2]"])
    assert opts == {"a.b": 1, "c": 1e-5, "d": "abc", "e": [1, 2]}


def test_list_cfg_imports_no_heavy_modules():
    code = (
        "import rmtrain.cli, sys; rmtrain.cli.main(['list-cfg']); "
        "print([m for m in ('torch','transformers','mmengine.runner') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert TINY in lines
    assert lines[-1] == "[]"


# --- config ------------------------------------------------------------------------------------


@pytest.fixture
def no_downloads(monkeypatch):
    """Replace the download entry points the shipped configs name; record any call."""
    import datasets
    import transformers

    class Calls(list):
        pass

    calls = Calls()

    def _boom(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError("a download entry point was called while loading a config")

    monkeypatch.setattr(datasets, "load_dataset", _boom)
    from rmtrain.model.internlm2 import InternLM2ForRewardModel

    classes = (transformers.AutoModel, transformers.AutoTokenizer, transformers.AutoModelForCausalLM)
    for cls in (*classes, InternLM2ForRewardModel):
        monkeypatch.setattr(cls, "from_pretrained", _boom)
    calls.boom = _boom
    return calls


@pytest.mark.parametrize("name", SHIPPED)
def test_load_every_shipped_config(name, no_downloads):
    from rmtrain.config import load_config

    cfg = load_config(name)
    for key in ("model", "train_dataloader", "optim_wrapper", "train_cfg"):
        assert key in cfg
    dataset = cfg.train_dataloader.dataset
    assert dataset.is_dpo is False and dataset.is_reward is True
    assert cfg.model.reward_token_id == dataset.reward_token_id
    assert isinstance(cfg.model.llm, dict)  # still a config, nothing built
    assert no_downloads == []


@pytest.mark.parametrize("name", [name for name in SHIPPED if name not in OFFLINE])
def test_hub_configs_refer_to_unbuilt_from_pretrained(name, no_downloads):
    from rmtrain.config import load_config

    cfg = load_config(name)
    # the config holds the (patched) entry points themselves, and never called them
    assert cfg.model.llm["type"] is no_downloads.boom
    if name not in LOCAL_DATA:
        assert cfg.train_dataloader.dataset.dataset["type"] is no_downloads.boom
    assert "pretrained_model_name_or_path" in cfg.model.llm
    assert no_downloads == []


@pytest.mark.parametrize(
    "key, hint",
    [
        ("optim_wrapper.optimizer.lrr", "Did you mean: optim_wrapper.optimizer.lr?"),
        ("train_dataloader.batchsize", "Did you mean: train_dataloader.batch_size?"),
        ("modle.loss_type", "Did you mean: model?"),
    ],
)
def test_unknown_cfg_option_key_hint(key, hint):
    from rmtrain.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config(TINY, {key: 1})
    message = str(info.value)
    assert f"'{key}'" in message
    assert hint in message


def test_unknown_cfg_option_without_near_miss():
    from rmtrain.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config(TINY, {"zzzzzz": 1})
    assert "Did you mean" not in str(info.value)
    assert "the top level" in str(info.value)


def test_known_cfg_options_applied():
    from rmtrain.config import load_config

    cfg = load_config(
        TINY,
        {"train_dataloader.batch_size": 4, "optim_wrapper.optimizer.lr": 1e-5, "param_scheduler.0.end": 0.5},
    )
    assert cfg.train_dataloader.batch_size == 4
    assert cfg.optim_wrapper.optimizer.lr == 1e-5
    assert cfg.param_scheduler[0].end == 0.5
    assert load_config(TINY).train_dataloader.batch_size == 16  # the file is untouched


def test_cfg_option_reward_token_is_set_in_the_data_set():
    from rmtrain.config import load_config

    # The model takes the reward token from the data set, so one override changes both.
    assert load_config(TINY, {"train_dataloader.dataset.reward_token_id": 4}).model.reward_token_id == 4
    # An override of the model's copy names the key to set instead.
    with pytest.raises(ConfigError, match="train_dataloader.dataset.reward_token_id"):
        load_config(TINY, {"model.reward_token_id": 4})


def _edited_tiny_config(tmp_path, old, new, count=1):
    text = shipped_configs()[TINY].read_text()
    assert old in text
    path = tmp_path / "edited.py"
    path.write_text(text.replace(old, new, count))
    return path


def test_reward_token_mismatch_in_file(tmp_path):
    from rmtrain.config import load_config

    # a model dict that repeats the data set's reward token (as XTuner's configs do) with another value
    path = _edited_tiny_config(tmp_path, "    loss_type=loss_type,", "    reward_token_id=4,\n    loss_type=loss_type,")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert "model.reward_token_id=4" in message
    assert "reward_token_id=3" in message
    assert str(path) in message


def test_edited_copy_loads(tmp_path):
    from rmtrain.config import load_config

    path = _edited_tiny_config(tmp_path, "batch_size = 16", "batch_size = 2")
    assert load_config(str(path)).train_dataloader.batch_size == 2


def test_dpo_dataset_config_rejected(tmp_path):
    from rmtrain.config import load_config

    path = _edited_tiny_config(tmp_path, "is_dpo=False", "is_dpo=True")
    with pytest.raises(ConfigError, match="is_dpo=False"):
        load_config(str(path))


def test_bad_batch_size_rejected(tmp_path):
    from rmtrain.config import load_config

    path = _edited_tiny_config(tmp_path, "batch_size = 16", "batch_size = 0")
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(str(path))


def test_missing_required_key(tmp_path):
    from rmtrain.config import load_config

    path = tmp_path / "partial.py"
    path.write_text("model = dict(type='x')\n")
    with pytest.raises(ConfigError, match="lacks train_dataloader, optim_wrapper, train_cfg"):
        load_config(str(path))


def test_broken_config_file(tmp_path):
    from rmtrain.config import load_config

    path = tmp_path / "broken.py"
    path.write_text("model = dict(\n")
    with pytest.raises(ConfigError, match="cannot load config"):
        load_config(str(path))


def test_internlm2_qlora_recipe_keeps_xtuner_settings(no_downloads):
    from rmtrain.config import load_config

    cfg = load_config("internlm2_chat_1_8b_reward_qlora_varlenattn_ultrafeedback")
    quantization, lora = cfg.model.llm.quantization_config, cfg.model.lora
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"
    assert quantization.bnb_4bit_use_double_quant is True
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (64, 16, 0.1)
    assert cfg.optim_wrapper.optimizer.lr == 1e-4
    assert cfg.train_dataloader.dataset.use_varlen_attn is True and cfg.model.use_varlen_attn is True
    assert cfg.train_dataloader.dataset.max_packed_length == 4096 and cfg.optim_wrapper.accumulative_counts == 16


def test_demo_recipe_trains_the_value_head_at_ten_times_the_trunk_learning_rate():
    """The recipe's head_lr_mult reaches the optimizer: mmengine matches the `v_head` key to the head only."""
    from mmengine.optim import build_optim_wrapper
    from torch import nn

    from rmtrain.config import load_config

    cfg = load_config("smollm2_135m_instruct_reward_full_demo")

    class Shaped(nn.Module):  # the parameter names of a RewardModel: the trunk under `model`, the head `v_head`
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
            self.v_head = nn.Linear(4, 1, bias=False)

    module = Shaped()
    optimizer = build_optim_wrapper(module, cfg.optim_wrapper).optimizer
    lr_of = {id(param): group["lr"] for group in optimizer.param_groups for param in group["params"]}
    base = cfg.optim_wrapper.optimizer.lr
    assert lr_of[id(module.v_head.weight)] == pytest.approx(10 * base)
    assert [lr_of[id(param)] for param in module.model.parameters()] == pytest.approx([base] * 4)

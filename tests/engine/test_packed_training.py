"""Training on packed rows: one process, two processes (DDP), and a half-switched config."""

import pytest
from test_distributed import config_variant, logged, rmtrain_train

from cli_runner import failure_text
from rmtrain.config import load_config
from rmtrain.errors import ConfigError

PACKED = dict(use_varlen_attn=True, max_packed_length=512)


@pytest.mark.slow
def test_packed_run_trains_every_pair_and_logs_real_tokens(tmp_path):
    config = config_variant(tmp_path, "packed", **PACKED)
    result = rmtrain_train(config, tmp_path / "w")
    assert result.returncode == 0, failure_text(result)
    assert "packed into" in result.stdout + result.stderr
    pairs = logged(tmp_path / "w", "num_samples")
    tokens = logged(tmp_path / "w", "num_tokens")
    # One bin per step: the steps of the epoch together hold the 64 training pairs, each once.
    assert sum(pairs) == 64
    assert all(0 < t <= 512 for t in tokens)
    loss = logged(tmp_path / "w", "loss")
    assert all(value == value for value in loss)  # no NaN from cross-sequence attention or empty rows


@pytest.mark.slow
def test_packed_run_on_two_processes(tmp_path):
    config = config_variant(tmp_path, "packed_ddp", **PACKED)
    result = rmtrain_train(config, tmp_path / "w", nproc=2)
    assert result.returncode == 0, failure_text(result)
    pairs = logged(tmp_path / "w", "num_samples")
    # Both ranks' bins are counted; bins are rounded up so every rank takes the same number of steps.
    assert sum(pairs) >= 64


def test_packing_is_set_once_and_a_contradicting_copy_is_an_error(tmp_path):
    # Set in the data set only (as the shipped recipes do): the model takes it from there.
    cfg = load_config(str(config_variant(tmp_path, "packed", **PACKED)))
    assert cfg.model.use_varlen_attn is True
    # A config written for XTuner repeats it in the model: a value that differs is refused.
    config = config_variant(
        tmp_path,
        "half",
        **PACKED,
        replacements=[
            ("    use_activation_checkpointing", "    use_varlen_attn=False,\n    use_activation_checkpointing")
        ],
    )
    with pytest.raises(ConfigError, match="use_varlen_attn must be the same everywhere"):
        load_config(str(config))

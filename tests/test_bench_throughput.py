"""The throughput benchmark's rmtrain arms are real config files: they load with the shared inputs given as
cfg-options, and the packed arm differs from the padded one only where packing needs it."""

from pathlib import Path

from rmtrain.config import load_config
from tools.bench_throughput.arms import rmtrain_cfg_options
from tools.bench_throughput.settings import CONFIG_DIR, LOG_INTERVAL

SPEC = dict(
    tokenizer_dir="tok", model_dir="model", data_file="pairs.jsonl", map_fn="string_preference_map_fn",
    reward_token_id=5, pad_token_id=3, max_length=128, max_packed_length=512, pairs_per_step=4,
    warmup=1, steps=3, lr=2e-5, betas=[0.9, 0.95], weight_decay=0.1, max_norm=1.0, dtype="float32",
)  # fmt: skip


def _load(arm: str):
    spec = dict(SPEC, arm=arm)
    return load_config(str(CONFIG_DIR / f"{arm}.py"), rmtrain_cfg_options(spec, Path("steps.json")))


def test_padded_arm_config_takes_the_shared_inputs():
    cfg = _load("rmtrain_padded")
    loader, dataset = cfg.train_dataloader, cfg.train_dataloader.dataset
    assert loader.batch_size == loader.sampler.batch_size == 4
    assert loader.sampler.type.__name__ == "LengthGroupedSampler"
    assert dataset.use_varlen_attn is False and cfg.model.use_varlen_attn is False
    assert dataset.reward_token_id == cfg.model.reward_token_id == 5
    assert dataset.tokenizer.pretrained_model_name_or_path == "tok"
    assert dataset.dataset.data_files == "pairs.jsonl"
    assert dataset.dataset_map_fn == "string_preference_map_fn"
    assert (dataset.max_length, dataset.max_packed_length) == (128, 512)
    assert loader.collate_fn.pad_token_id == 3
    assert cfg.model.llm.pretrained_model_name_or_path == "model"
    assert cfg.train_cfg.max_iters == 4
    assert cfg.optim_wrapper.dtype == "float32"
    assert dict(cfg.optim_wrapper.optimizer, type=None) == dict(type=None, lr=2e-5, betas=(0.9, 0.95), weight_decay=0.1)
    assert cfg.custom_hooks[0].out_file == "steps.json"
    assert cfg.default_hooks.logger.interval == cfg.log_processor.window_size == LOG_INTERVAL


def test_packed_arm_config_differs_only_in_packing():
    padded, packed = _load("rmtrain_padded"), _load("rmtrain_packed")
    assert packed.train_dataloader.batch_size == 1  # one packed bin per optimizer step
    assert packed.train_dataloader.dataset.use_varlen_attn is True and packed.model.use_varlen_attn is True
    assert packed.train_dataloader.sampler.type.__name__ == "DefaultSampler"
    assert "batch_size" not in packed.train_dataloader.sampler
    for key in ("optim_wrapper", "train_cfg", "default_hooks", "param_scheduler", "custom_hooks", "randomness"):
        assert packed[key] == padded[key], key
    assert dict(packed.model, use_varlen_attn=None) == dict(padded.model, use_varlen_attn=None)
    unpacked = dict(packed.train_dataloader.dataset, use_varlen_attn=False)
    assert unpacked == padded.train_dataloader.dataset

"""LoRA and QLoRA trunks: PEFT adapters on a frozen (optionally 4- or 8-bit) language model.

The reward model's value head stays outside PEFT and is trained in full (see RewardModel); this
module only wraps the trunk, merges its adapters back for export, and writes PEFT adapter folders.

- `lora=dict(type=LoraConfig, ...)` (or a plain dict of LoraConfig's arguments) in the model config;
  `target_modules` defaults per architecture (DEFAULT_TARGET_MODULES, else every linear layer).
- `llm=dict(..., quantization_config=dict(type=BitsAndBytesConfig, ...))` loads the trunk in 4 or 8
  bits through transformers and bitsandbytes; the adapters and the head stay in fp32.
"""

import copy
import re

import torch
from mmengine.logging import print_log
from torch import nn

from rmtrain.builder import is_buildable, resolve_type
from rmtrain.compat import installed_version
from rmtrain.errors import ConfigError

PEFT_INSTALL = "pip install peft==0.21.2  (or: pip install -e '.[lora]')"
BITSANDBYTES_INSTALL = "pip install bitsandbytes==0.50.2  (or: pip install -e '.[lora]')"
MIN_VERSIONS = {"peft": "0.13", "bitsandbytes": "0.45"}

# The attention and MLP projections of each family (what LoRA papers and peers adapt by default).
DEFAULT_TARGET_MODULES = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "internlm2": ["wqkv", "wo", "w1", "w2", "w3"],
}


def require(package: str) -> None:
    """ConfigError naming the package and its install command when it is missing or older than rmtrain needs."""
    from packaging.version import Version

    install = PEFT_INSTALL if package == "peft" else BITSANDBYTES_INSTALL
    version = installed_version(package)
    what = "LoRA (model.lora)" if package == "peft" else "a quantised trunk (llm.quantization_config, QLoRA)"
    if version is None:
        raise ConfigError(f"{what} needs the '{package}' package, which is not installed: {install}")
    if version < Version(MIN_VERSIONS[package]):
        raise ConfigError(
            f"{what} needs {package} >= {MIN_VERSIONS[package]}, but {package} {version} is installed: {install}"
        )


def is_quantized(llm) -> bool:
    """The llm config asks transformers for a 4- or 8-bit load (QLoRA)."""
    return is_buildable(llm) and llm.get("quantization_config") is not None


def with_compute_dtype(llm, compute_dtype: torch.dtype):
    """The llm config with `bnb_4bit_compute_dtype` set to `compute_dtype` where the user left it out."""
    llm = copy.copy(llm)
    quantization = llm["quantization_config"]
    if is_buildable(quantization) and quantization.get("load_in_4bit") and "bnb_4bit_compute_dtype" not in quantization:
        llm["quantization_config"] = dict(quantization, bnb_4bit_compute_dtype=compute_dtype)
    return llm


def without_quantization(llm):
    """The llm config that loads the same base weights in full precision (fp32), for merging and export."""
    llm = {key: value for key, value in llm.items() if key not in ("quantization_config", "device_map")}
    llm["dtype"] = torch.float32
    llm.pop("torch_dtype", None)
    return llm


def lora_config(lora):
    """`lora` from a model config (a LoraConfig, dict(type=LoraConfig, ...) or LoraConfig's kwargs) -> a LoraConfig."""
    require("peft")
    from peft import LoraConfig

    if isinstance(lora, LoraConfig):
        return copy.deepcopy(lora)
    if not isinstance(lora, dict):
        raise ConfigError(f"model.lora must be dict(type=LoraConfig, r=..., ...), got {type(lora).__name__}")
    kwargs = {key: value for key, value in lora.items() if key != "type"}
    config_class = resolve_type(lora["type"]) if "type" in lora else LoraConfig
    try:
        return config_class(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.lora: {error}") from error


def _linear_leaf_names(trunk: nn.Module) -> list[str]:
    """The short names of the trunk's linear layers ('q_proj', 'wqkv', ...), which target_modules can name."""
    names = set()
    for name, module in trunk.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def _check_targets(trunk: nn.Module, targets, where: str) -> None:
    """Every target_modules name must match a module of the trunk; the error lists those that exist."""
    module_names = [name for name, _ in trunk.named_modules() if name]
    if isinstance(targets, str):
        unmatched = [] if any(re.fullmatch(targets, name) for name in module_names) else [targets]
    else:
        unmatched = [
            target
            for target in targets
            if target != "all-linear"
            and not any(name == target or name.endswith("." + target) for name in module_names)
        ]
    if unmatched:
        raise ConfigError(
            f"{where} {unmatched} match no module of the {trunk.config.model_type} trunk; its linear layers are: "
            f"{', '.join(_linear_leaf_names(trunk))}"
        )


def apply_lora(trunk: nn.Module, lora, quantized: bool, activation_checkpointing: bool) -> nn.Module:
    """The trunk wrapped by PEFT: frozen base weights, trainable adapters (and any `modules_to_save`)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    config = lora_config(lora)
    if config.target_modules is None:
        model_type = trunk.config.model_type
        targets = DEFAULT_TARGET_MODULES.get(model_type) or [
            name for name in _linear_leaf_names(trunk) if name not in ("lm_head", "output", "score", "v_head")
        ]
        config.target_modules = set(targets)
        how = f"the default for {model_type}" if model_type in DEFAULT_TARGET_MODULES else "every linear layer"
        print_log(f"LoRA target_modules not set: adapting {sorted(targets)} ({how})", logger="current")
    else:
        targets = sorted(config.target_modules) if isinstance(config.target_modules, set) else config.target_modules
        _check_targets(trunk, targets, "model.lora.target_modules")
        print_log(f"LoRA target_modules: {targets}", logger="current")
    if config.modules_to_save:
        _check_targets(trunk, list(config.modules_to_save), "model.lora.modules_to_save")
    if quantized:
        # Casts the remaining full-precision weights (norms, embeddings) to fp32 for stable training and
        # lets gradients reach the adapters; rmtrain's own activation checkpointing is already set.
        trunk = prepare_model_for_kbit_training(trunk, use_gradient_checkpointing=False)
    if activation_checkpointing:
        # Checkpointed blocks whose input needs no gradient (a frozen embedding) would drop the adapters'
        # gradients under reentrant checkpointing; rmtrain uses non-reentrant, this keeps both safe.
        trunk.enable_input_require_grads()
    peft_model = get_peft_model(trunk, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    print_log(
        f"LoRA r={config.r}, alpha={config.lora_alpha}, dropout={config.lora_dropout}: {trainable:,} trainable "
        f"trunk parameters of {total:,} ({100 * trainable / max(total, 1):.2f}%), plus the value head",
        logger="current",
    )
    return peft_model


def _adapter_weights(peft_model) -> dict:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(peft_model)


def with_adapters_of(peft_model, full_precision_trunk: nn.Module):
    """`full_precision_trunk` (the same base model as `peft_model`'s, loaded without quantisation) with its adapters.

    A quantised trunk cannot take merged weights exactly, so export and merging start from this.
    """
    from peft import get_peft_model, set_peft_model_state_dict

    config = copy.deepcopy(peft_model.peft_config["default"])
    rebuilt = get_peft_model(full_precision_trunk, config)
    result = set_peft_model_state_dict(rebuilt, _adapter_weights(peft_model))
    if result.unexpected_keys:
        raise ConfigError(f"the full-precision base model does not take the adapters: {result.unexpected_keys[:6]}")
    return rebuilt.float()


def adapter_classifier(peft_model, value_head: nn.Module, base_model_name_or_path: str, pad_token_id: int | None):
    """A PEFT sequence classifier (task SEQ_CLS) holding the trained adapters, with the value head as `score`.

    `score` is in modules_to_save, so the adapter folder written from it carries the head: PEFT's
    AutoPeftModelForSequenceClassification then rebuilds the trained reward model from the base model.
    """
    from peft import get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForSequenceClassification

    classifier = AutoModelForSequenceClassification.from_pretrained(
        base_model_name_or_path, num_labels=1, pad_token_id=pad_token_id, dtype=torch.float32
    )
    with torch.no_grad():
        classifier.score.weight.copy_(value_head.weight.float())
    config = copy.deepcopy(peft_model.peft_config["default"])
    config.task_type = "SEQ_CLS"
    config.modules_to_save = sorted(set(config.modules_to_save or []) | {"score"})
    config.base_model_name_or_path = base_model_name_or_path
    config.inference_mode = True
    wrapped = get_peft_model(classifier, config)
    # The trunk's adapter keys gain the classifier's trunk prefix ('layers.0' -> 'model.layers.0').
    prefix = classifier.base_model_prefix
    weights = {
        f"base_model.model.{prefix}.{key[len('base_model.model.') :]}": value
        for key, value in _adapter_weights(peft_model).items()
    }
    weights["base_model.model.score.weight"] = value_head.weight.detach().float()
    result = set_peft_model_state_dict(wrapped, weights)
    if result.unexpected_keys:
        raise ConfigError(f"the sequence classifier does not take the adapters: {result.unexpected_keys[:6]}")
    return wrapped.eval()

"""GPU memory for a recipe's model states (weights, gradients, AdamW state), per launch, before anything loads.

The reward model is built on the `meta` device from its config alone: a config-built trunk from its
config, a Hugging Face model from the folder's config.json when the path exists here, else from the
architecture table below (no download, no weights). Its parameter count then gives the bytes each
GPU holds for the model states, in the form of the ZeRO paper (K = 12 bytes of AdamW state per
parameter: the fp32 master copy, exp_avg and exp_avg_sq):

| launch | bf16 / fp16 | fp32 |
|---|---|---|
| DDP (`AutocastOptimWrapper`) | 20 = fp32 weights 4 + grads 4 + DDP's gradient buckets 4 + AdamW 8 (16 on one GPU: no buckets) | the same |
| ZeRO-1 | 2 + 2 + 12 / N | 4 + 4 + 8 / N |
| ZeRO-2 | 2 + (2 + 12) / N | 4 + (4 + 8) / N |
| ZeRO-3 | (2 + 2 + 12) / N | (4 + 4 + 8) / N |

bytes per parameter per GPU, N GPUs; the offload variants keep the optimizer state (and under
ZeRO-3 offload the weights) in host memory. Activations come on top (they depend on the batch, the
sequence length and activation checkpointing), so a launch is said to fit when its model states
take at most FIT_FRACTION of the GPU. `rmtrain train` on CUDA refuses a launch whose model states
alone exceed the GPU and names the launches that fit.
"""

import os
from dataclasses import dataclass

import torch

from rmtrain.builder import build, resolve_type
from rmtrain.errors import ConfigError

GIB = 2**30
FIT_FRACTION = 0.8  # of the GPU for model states; the rest is for activations and the CUDA context
LAUNCHES = ("ddp", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload")

# The architectures of the shipped recipes' hub models (from their config.json), keyed by the name a
# config gives (`pretrained_model_name_or_path`, or the name of the function that builds the model).
ARCHITECTURES = {
    "internlm/internlm2-chat-1_8b-sft": dict(
        model_type="internlm2", vocab_size=92544, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, bias=False,
    ),
    "internlm/POLAR-1_8B-Base": dict(  # InternLM2-1.8B
        model_type="internlm2", vocab_size=92544, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, bias=False,
    ),
    "internlm/POLAR-7B-Base": dict(  # InternLM2-7B
        model_type="internlm2", vocab_size=92544, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, bias=False,
    ),
    "meta-llama/Meta-Llama-3-8B-Instruct": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    ),
    "Qwen/Qwen2.5-1.5B-Instruct": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
    ),
    "smollm2_135m_instruct_model": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
    ),
}  # fmt: skip


@dataclass
class MemoryEstimate:
    """Model-state bytes per GPU for one launch on `gpus` GPUs."""

    launch: str
    gpus: int
    weights: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer

    def fits(self, device_bytes: float) -> bool:
        return self.total <= FIT_FRACTION * device_bytes


def _trunk_config(llm):
    """The transformers config of the trunk a `model.llm` config builds, without weights; None if unknown."""
    from transformers import AutoConfig

    import rmtrain.model  # noqa: F401  (registers InternLM2 with the Auto classes)

    if not isinstance(llm, dict):
        return getattr(llm, "config", None)
    if "config" in llm:
        return build(llm["config"], recursive=True)
    name = llm.get("pretrained_model_name_or_path")
    if name and os.path.isfile(os.path.join(str(name), "config.json")):
        return AutoConfig.from_pretrained(name)
    if name is None:
        name = getattr(resolve_type(llm["type"]), "__name__", None)
    if name in ARCHITECTURES:
        dims = dict(ARCHITECTURES[name])
        return AutoConfig.for_model(dims.pop("model_type"), **dims)
    return None


def count_parameters(model_cfg) -> int | None:
    """Parameters of the reward model (trunk + value head) a config builds, counted on the meta device."""
    from transformers import AutoModel

    config = _trunk_config(model_cfg.get("llm"))
    if config is None:
        return None
    with torch.device("meta"):
        trunk = AutoModel.from_config(config)
    trunk = getattr(trunk, "base_model", trunk)
    return sum(p.numel() for p in trunk.parameters()) + config.hidden_size  # + the value head


def estimate(params: int, launch: str, gpus: int, half_precision: bool = True) -> MemoryEstimate:
    """Model-state bytes per GPU (see the table in this module's docstring)."""
    if launch not in LAUNCHES:
        raise ValueError(f"launch must be one of {LAUNCHES}, got {launch!r}")
    if launch == "ddp":  # fp32 master weights whatever the autocast dtype; DDP copies gradients into buckets
        return MemoryEstimate(launch, gpus, 4 * params, (8 if gpus > 1 else 4) * params, 8 * params)
    weight_bytes = 2 if half_precision else 4
    optimizer_bytes = 12 if half_precision else 8
    stage = int(launch[4])
    offload = launch.endswith("_offload")
    weights = weight_bytes * params / (gpus if stage == 3 else 1)
    grads = weight_bytes * params / (gpus if stage >= 2 else 1)
    optimizer = 0.0 if offload else optimizer_bytes * params / gpus
    if offload and stage == 3:
        weights = 0.0  # gathered layer by layer from host memory
    return MemoryEstimate(launch, gpus, weights, grads, optimizer)


def deepspeed_launch(deepspeed_config: dict) -> str:
    zero = deepspeed_config.get("zero_optimization") or {}
    stage = int(zero.get("stage", 0))
    if stage == 0:
        return "ddp"
    return f"zero{stage}" + ("_offload" if stage in (2, 3) and zero.get("offload_optimizer") else "")


def launch_flag(launch: str) -> str:
    return "DDP (no --deepspeed)" if launch == "ddp" else f"--deepspeed {launch}"


def check_model_fits(cfg, launch: str, gpus: int, device_bytes: float, half_precision: bool, warn=None) -> None:
    """ConfigError when the model states alone exceed the GPU, naming the launches that fit."""
    params = count_parameters(cfg.model)
    if params is None:
        return
    chosen = estimate(params, launch, gpus, half_precision)
    if chosen.fits(device_bytes):
        return
    fitting = [
        option
        for option in (estimate(params, name, gpus, half_precision) for name in LAUNCHES)
        if option.fits(device_bytes)
    ]
    suggestion = (
        "; launches whose model states fit: "
        + ", ".join(f"{launch_flag(option.launch)} ({option.total / GIB:.1f} GiB)" for option in fitting)
        if fitting
        else f"; no launch fits on {gpus} GPU(s): use more GPUs (NPROC_PER_NODE, NNODES) with --deepspeed zero3"
    )
    message = (
        f"the model has {params / 1e9:.2f}B parameters: its weights, gradients and AdamW state take "
        f"{chosen.total / GIB:.1f} GiB per GPU with {launch_flag(chosen.launch)} on {gpus} GPU(s), and this GPU "
        f"has {device_bytes / GIB:.1f} GiB{suggestion} (see docs/en/gpu.md)"
    )
    if chosen.total > device_bytes:
        raise ConfigError(message)
    if warn is not None:
        warn(f"{message}; little room is left for activations")


def check_gpu_memory(cfg, deepspeed: str | None, gpus: int, warn=None) -> None:
    """The start-up check of `rmtrain train` on CUDA: the launch asked for must hold the model states."""
    from rmtrain.engine.deepspeed import read_deepspeed_config
    from rmtrain.engine.precision import resolve_precision

    if cfg.model.get("lora") is not None:
        # The estimate is full training's: for adapters it is only an upper bound, never a reason to refuse.
        return
    launch = deepspeed_launch(read_deepspeed_config(deepspeed)) if deepspeed else "ddp"
    precision = cfg.optim_wrapper.get("dtype", cfg.get("mixed_precision", "auto"))
    half_precision = resolve_precision(precision, "cuda") != torch.float32
    device_bytes = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    check_model_fits(cfg, launch, gpus, device_bytes, half_precision, warn)


RECOMMENDED_ORDER = ("ddp", "zero2", "zero3", "zero3_offload")  # the first that fits is the launch to use


def recommended_launch(params: int, gpus: int, device_bytes: float, half_precision: bool = True) -> str | None:
    for launch in RECOMMENDED_ORDER:
        if estimate(params, launch, gpus, half_precision).fits(device_bytes):
            return launch
    return None


def recipe_memory_rows(device_bytes: float = 80e9, gpus: int = 8) -> list[dict]:
    """For every shipped recipe (not the DeepSpeed JSONs): its parameters, GiB per GPU and the launch to use."""
    from rmtrain.config import load_config
    from rmtrain.recipes import shipped_configs

    rows = []
    for name, path in shipped_configs().items():
        if path.suffix != ".py":
            continue
        params = count_parameters(load_config(str(path)).model)
        row = dict(recipe=name, params=params)
        if params is not None:
            for launch in ("ddp", "zero2", "zero3"):
                row[f"{launch}_x{gpus}"] = estimate(params, launch, gpus).total
            row["one_gpu"] = estimate(params, "ddp", 1).total
            row[f"launch_x{gpus}"] = recommended_launch(params, gpus, device_bytes)
            row["launch_x1"] = recommended_launch(params, 1, device_bytes)
        rows.append(row)
    return rows

"""Mixed precision, one rule for training, validation, evaluation and the export check.

A config names its precision once (`mixed_precision`, the optimizer wrapper's `dtype`): 'bfloat16',
'float16', 'float32' or 'auto'. `resolve_precision` turns it into the dtype the forward pass runs in
on a device, and `autocast_context` gives the autocast context for that dtype; every forward pass
(training steps, validation, `rmtrain eval`, the export check) runs under it.

'auto' picks bf16 only where the hardware computes it natively: CUDA GPUs of compute capability 8
and newer (A100, H100, RTX 30xx and later) and CPUs with AVX512-BF16 or AMX. Older GPUs (V100, T4)
report bf16 through emulation, which is slow: 'auto' picks fp16 with dynamic loss scaling there.
On other CPUs it picks fp32 (CPU autocast without bf16 instructions is slower than fp32).

mmengine's AmpOptimWrapper needs a GPU, so rmtrain uses its own wrapper on every device: the forward
pass runs under autocast, the parameters, gradients and optimizer state stay in fp32, and fp16 scales
the loss with torch.amp.GradScaler (its state is saved with the optimizer's, for exact resume).
"""

from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper

from rmtrain.errors import ConfigError

PRECISIONS = {
    "auto": None,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


def bf16_native(device_type: str) -> bool:
    """Whether the device computes bf16 in hardware (not through emulation)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
    if device_type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def bf16_supported(device_type: str) -> bool:  # the earlier name, kept for callers outside rmtrain
    return bf16_native(device_type)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"mixed precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device_type: str) -> torch.dtype:
    """The dtype the forward pass runs in: 'auto' -> bf16 where native, else fp16 on CUDA, else fp32."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is not None:
        return dtype
    if bf16_native(device_type):
        return torch.bfloat16
    return torch.float16 if device_type == "cuda" else torch.float32


def autocast_context(device_type: str, dtype: torch.dtype):
    """torch.autocast for `dtype` on the device (off for fp32)."""
    return torch.autocast(device_type, dtype=dtype, enabled=dtype in (torch.bfloat16, torch.float16))


def model_device_type(model: torch.nn.Module) -> str:
    return next(model.parameters()).device.type


class AutocastOptimWrapper(OptimWrapper):
    """OptimWrapper whose forward context is autocast in the configured precision.

    Args:
        dtype: 'auto', 'bfloat16', 'float16' (with dynamic loss scaling) or 'float32' (autocast off);
            see `resolve_precision`.
        All other arguments are OptimWrapper's (optimizer, accumulative_counts, clip_grad).
    """

    def __init__(self, *args, dtype: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.dtype = check_precision(dtype)
        self.loss_scaler = None  # torch.amp.GradScaler once the forward runs in fp16
        self._pending_scaler_state = None

    def forward_dtype(self, device_type: str) -> torch.dtype:
        return resolve_precision(self.dtype, device_type)

    def autocast_enabled(self, device_type: str) -> bool:
        return self.forward_dtype(device_type) != torch.float32

    def _prepare_scaler(self, device_type: str, dtype: torch.dtype) -> None:
        if dtype != torch.float16 or self.loss_scaler is not None:
            return
        self.loss_scaler = torch.amp.GradScaler(device_type)
        if self._pending_scaler_state is not None:
            self.loss_scaler.load_state_dict(self._pending_scaler_state)
            self._pending_scaler_state = None

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        device_type = model_device_type(model)
        dtype = self.forward_dtype(device_type)
        self._prepare_scaler(device_type, dtype)
        with super().optim_context(model):
            with autocast_context(device_type, dtype):
                yield

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        if self.loss_scaler is not None:
            loss = self.loss_scaler.scale(loss)
        super().backward(loss, **kwargs)

    def step(self, **kwargs) -> None:
        if self.loss_scaler is None:
            return super().step(**kwargs)
        if self.clip_grad_kwargs:
            self.loss_scaler.unscale_(self.optimizer)  # clip the true gradients
            self._clip_grad()
        self.loss_scaler.step(self.optimizer, **kwargs)  # skipped when a gradient is inf or nan
        self.loss_scaler.update()

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.loss_scaler is not None:
            state["loss_scaler"] = self.loss_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        scaler_state = state_dict.pop("loss_scaler", None)
        if scaler_state is not None:
            if self.loss_scaler is not None:
                self.loss_scaler.load_state_dict(scaler_state)
            else:  # the scaler is made at the first forward pass, when the device is known
                self._pending_scaler_state = scaler_state
        super().load_state_dict(state_dict)


def validation_autocast(runner):
    """The autocast context of the training steps, for validation: the runner's AutocastOptimWrapper's
    dtype on the model's device (fp32 for other optimizer wrappers: DeepSpeed's weights are already
    in the training dtype)."""
    optim_wrapper = getattr(runner, "optim_wrapper", None)
    device_type = model_device_type(runner.model)
    if not isinstance(optim_wrapper, AutocastOptimWrapper):
        return autocast_context(device_type, torch.float32)
    return autocast_context(device_type, optim_wrapper.forward_dtype(device_type))

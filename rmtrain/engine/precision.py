"""Mixed precision for training: bf16 autocast on CUDA and on CPU, with fp32 master weights.

mmengine's AmpOptimWrapper needs a GPU (and a loss scaler that bf16 does not need), so rmtrain
uses this wrapper on every device: the forward pass runs under torch.autocast, the parameters,
gradients and optimizer state stay in fp32.
"""

from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper


def bf16_supported(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        # Without native bf16 instructions, CPU autocast is slower than fp32.
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


class AutocastOptimWrapper(OptimWrapper):
    """OptimWrapper whose forward context is bf16 autocast.

    Args:
        dtype: 'bfloat16', 'float32' (autocast off) or 'auto' (bf16 where the device supports it).
        All other arguments are OptimWrapper's (optimizer, accumulative_counts, clip_grad).
    """

    def __init__(self, *args, dtype: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        if dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"dtype must be 'auto', 'bfloat16' or 'float32', got '{dtype}'")
        self.dtype = dtype

    def autocast_enabled(self, device_type: str) -> bool:
        if self.dtype == "auto":
            return bf16_supported(device_type)
        return self.dtype == "bfloat16"

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        device_type = next(model.parameters()).device.type
        with super().optim_context(model):
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.autocast_enabled(device_type)):
                yield

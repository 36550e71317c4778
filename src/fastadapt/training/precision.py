"""Numeric precision of a run: ``fp32``, or ``bf16`` mixed precision.

With ``bf16`` the meta-loss (MAML's inner loop included, which runs inside it) and evaluation run under
``torch.autocast`` with bfloat16: convolutions and matrix products take bf16 inputs, accumulate in fp32 and
return bf16, so activations take half the memory and, on hardware with bf16 arithmetic (CUDA tensor cores;
CPUs with AMX or AVX512-BF16), run several times faster. What stays fp32: the weights the optimizer updates
(master weights), their gradients, the optimizer's state, batch-normalisation statistics, every loss reduction
(``per_task_loss``) and the distances and similarities metric learners turn into logits. No loss scaling is
needed: bf16 has fp32's exponent range.
"""
from __future__ import annotations

from contextlib import AbstractContextManager

import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    return precision


def autocast(precision: str, device: torch.device | str, cache: bool = True) -> AbstractContextManager:
    """The context the forward passes of a run execute in: bf16 autocast on ``device``, or nothing for fp32.
    ``cache`` off: no cache of weights cast to bf16 (a CUDA graph cannot capture one)."""
    device = torch.device(device)
    if check_precision(precision) == "bf16" and device.type not in ("cpu", "cuda"):
        raise ValueError(f"precision bf16 runs on cpu and cuda devices, not {device.type!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=cache)


def has_native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bf16 natively. A CPU without AVX512-BF16 or AMX (any AMD CPU before Zen 4,
    Intel before Cooper Lake) has no oneDNN bf16 kernels: PyTorch then runs bf16 convolutions and matrix products
    in slow reference code, far slower than fp32 (the speed benchmark measures both)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False

"""Counter-based random numbers: every random draw is a pure function of (seed, counters).

Environments and policies draw their noise as ``uniform(seed, *counters)``
(episode, step, draw...) instead of from a stateful generator. A trajectory
then depends only on its own seed: not on how many environments are stepped
together, in which order, or in which process. That is what lets the batched
simulator give the same trajectories as the one-at-a-time gymnasium
environment, and a meta-batch split over processes sample what one process
would.

The hash is Chris Wellons' 32-bit "lowbias32" integer mixer, evaluated in
int64 arithmetic that never overflows (products stay below 2**49), so the
same function runs on Python ints, NumPy int64 arrays and torch int64 tensors.
"""
from __future__ import annotations

import math
from typing import TypeVar

import torch

Int = TypeVar("Int")  # an int, or an int64 array / tensor of any shape

MASK32 = 0xFFFFFFFF
GOLDEN32 = 0x9E3779B1  # odd multiplier that spreads consecutive counters over all 32 bits


def _mul32(x: Int, constant: int) -> Int:
    """x * constant mod 2**32 for 0 <= x < 2**32, without an intermediate above 2**49."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & MASK32


def hash32(x: Int) -> Int:
    x = x & MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def mix(seed: Int, *counters: Int) -> Int:
    """A 32-bit key for (seed, counters...); broadcasts like the arithmetic it is made of."""
    key = hash32(seed)
    for counter in counters:
        key = hash32(key ^ _mul32(counter & MASK32, GOLDEN32))
    return key


def uniform(seed: torch.Tensor, *counters: int | torch.Tensor) -> torch.Tensor:
    """Uniform numbers in (0, 1), float64, shaped like ``seed`` broadcast with the counters."""
    return (mix(torch.as_tensor(seed, dtype=torch.int64), *counters).double() + 0.5) / 2.0**32


def normal(seed: torch.Tensor, *counters: int | torch.Tensor) -> torch.Tensor:
    """Standard normal numbers, float64, by the Box-Muller transform of two counter-based uniforms."""
    radius = torch.sqrt(-2.0 * torch.log(uniform(seed, *counters, 0)))
    return radius * torch.cos(2.0 * math.pi * uniform(seed, *counters, 1))


def derive_seeds(seed: torch.Tensor, *counters: int | torch.Tensor) -> torch.Tensor:
    """New independent seeds (int64 in [0, 2**32)) for sub-streams: per trajectory, per round, per purpose."""
    return mix(torch.as_tensor(seed, dtype=torch.int64), *counters)

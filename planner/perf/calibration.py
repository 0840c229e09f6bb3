"""Calibration of the kernel primitives on measured tables. PLACEHOLDER: to be replaced."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np


@dataclass(frozen=True)
class Calibration:
    name: str
    gemm: np.ndarray
    attn_prefill: np.ndarray
    attn_decode: np.ndarray


@cache
def load_calibration(name: str = "h100-sxm") -> Calibration:
    z = np.zeros(1)
    return Calibration(name, z, z, z)

"""Peak dense tensor-core throughput of the accelerators MFU is reported for, as data.

The figures are NVIDIA's datasheet numbers *without* structured sparsity (the datasheets print the
2:4-sparsity figure first: 1979 "BF16 TFLOPS" on an H100 SXM is 989.4 dense). A device that is not in
the table gets no MFU rather than a guessed peak.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Accelerator:
    name: str
    # Matched against torch.cuda.get_device_name(), e.g. "NVIDIA H100 80GB HBM3".
    pattern: str
    memory_gb: float
    bf16_dense_tflops: float
    fp8_dense_tflops: Optional[float]

    def peak_tflops(self, precision: str) -> Optional[float]:
        return {"bf16": self.bf16_dense_tflops, "fp16": self.bf16_dense_tflops,
                "fp8": self.fp8_dense_tflops}.get(precision)


# First match wins: the NVL and PCIe boards before the SXM part whose name they contain.
ACCELERATORS: tuple[Accelerator, ...] = (
    Accelerator("H100 NVL", r"\bH100 NVL\b", 94, 835.5, 1670.5),
    Accelerator("H100 PCIe", r"\bH100 PCIe\b", 80, 756.5, 1513.0),
    Accelerator("H100 SXM", r"\bH100\b", 80, 989.4, 1978.9),
    Accelerator("H200 NVL", r"\bH200 NVL\b", 141, 835.5, 1670.5),
    Accelerator("H200 SXM", r"\bH200\b", 141, 989.4, 1978.9),
    Accelerator("A100 40GB", r"\bA100\b.*\b40GB\b", 40, 312.0, None),
    Accelerator("A100 80GB", r"\bA100\b", 80, 312.0, None),
)


def find_accelerator(device_name: str) -> Optional[Accelerator]:
    for accelerator in ACCELERATORS:
        if re.search(accelerator.pattern, device_name, flags=re.IGNORECASE):
            return accelerator
    return None


@dataclass(frozen=True)
class Peak:
    """The peak MFU is measured against, and where it came from."""

    device: str  # as the runtime names it, e.g. "NVIDIA H100 80GB HBM3", or "cpu"
    accelerator: Optional[str]  # the table row, e.g. "H100 SXM"; None when unknown
    precision: str  # "bf16", "fp16", "fp8" or "fp32"
    tflops: Optional[float]  # None: no MFU

    def describe(self) -> str:
        if self.tflops is None:
            return f"{self.device}: no {self.precision} peak in the table, so no MFU"
        return (f"{self.device} ({self.accelerator}), {self.precision.upper()} dense peak "
                f"{self.tflops:g} TFLOP/s")


def training_precision(dtype: str, fp8: bool) -> str:
    """The tensor-core precision of a run's matrix products: fp8 when FP8 is on, else the dtype."""
    return "fp8" if fp8 else dtype


def peak_for(device_name: str, precision: str) -> Peak:
    accelerator = find_accelerator(device_name)
    tflops = accelerator.peak_tflops(precision) if accelerator else None
    return Peak(device_name, accelerator.name if accelerator else None, precision, tflops)


def detect_peak(precision: str) -> Peak:
    """The peak of this process's CUDA device; on the CPU, none."""
    import torch

    if not torch.cuda.is_available():
        return Peak("cpu", None, precision, None)
    return peak_for(torch.cuda.get_device_name(), precision)

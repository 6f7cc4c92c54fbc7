"""RMSNorm for the non-TE specs (``sdpa``, ``local``) that works with sequence parallelism.

megatron-core's own non-TE norm (``WrappedTorchNorm``) refuses ``sequence_parallel``. Under
sequence parallelism each TP rank normalises its own slice of the sequence, so the gradient of the
norm weight on one rank is a partial sum. megatron-core's ``finalize_model_grads`` all-reduces over
TP the gradient of every parameter that carries ``sequence_parallel = True`` (TE's norms set the
same attribute); this module sets it on its weight. The math is ``torch.nn.functional.rms_norm``,
the same call ``torch.nn.RMSNorm`` makes, so results equal the local spec's norm bitwise, and the
checkpoint key (``weight``) is the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig


class SequenceParallelRMSNorm(torch.nn.Module):
    """Takes the constructor arguments megatron-core passes to a ``layer_norm`` submodule."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5,
                 persist_layer_norm: bool = False, zero_centered_gamma: bool = False,
                 normalization: str = "RMSNorm"):
        super().__init__()
        if normalization != "RMSNorm" or config.layernorm_zero_centered_gamma:
            raise ValueError("SequenceParallelRMSNorm implements plain RMSNorm only")
        self.normalized_shape = (hidden_size,)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(hidden_states, self.normalized_shape, self.weight, self.eps)

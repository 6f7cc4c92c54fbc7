"""ModelConfig: the architecture of a Llama-3 family decoder and its numeric precision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from megatron_cpt.errors import ConfigError


@dataclass
class RopeScalingConfig:
    """Llama-3.1 RoPE frequency scaling (``rope_type: llama3`` in Hugging Face configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass
class Fp8Config:
    """FP8 through Transformer Engine, wired into megatron-core's TransformerConfig."""

    format: Literal["hybrid", "e4m3"] = "hybrid"
    recipe: Literal["delayed", "tensorwise", "mxfp8", "blockwise"] = "delayed"
    amax_history_len: int = 1024
    amax_compute_algo: Literal["max", "most_recent"] = "max"
    margin: int = 0
    param_gather: bool = False


@dataclass
class ModelConfig:
    preset: Optional[str] = None
    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: int = 224
    num_attention_heads: int = 4
    num_query_groups: int = 2
    vocab_size: int = 1024
    max_position_embeddings: int = 8192
    rope_theta: float = 500000.0
    rope_scaling: Optional[RopeScalingConfig] = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    # The embedding and output rows are padded to a multiple of this times TP. Padding rows give
    # logit 0 and so enter the softmax: 16 keeps Llama-3's 128256 unpadded for every TP <= 16,
    # so a converted checkpoint's first-step loss equals the Hugging Face loss.
    make_vocab_size_divisible_by: int = 16
    init_method_std: float = 0.02
    dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    attention_backend: Literal["auto", "te", "sdpa", "local"] = "auto"
    fp8: Optional[Fp8Config] = None
    recompute: Literal["none", "selective", "full"] = "none"

    @property
    def kv_channels(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        positive = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                    "num_query_groups", "vocab_size", "max_position_embeddings",
                    "make_vocab_size_divisible_by")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name}: must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.num_attention_heads: {self.num_attention_heads} does not divide "
                f"model.hidden_size {self.hidden_size}")
        if self.num_attention_heads % self.num_query_groups:
            raise ConfigError(
                f"model.num_query_groups: {self.num_query_groups} does not divide "
                f"model.num_attention_heads {self.num_attention_heads}")
        if self.rope_theta <= 0:
            raise ConfigError(f"model.rope_theta: must be positive, got {self.rope_theta}")
        if not 0 < self.norm_eps < 1:
            raise ConfigError(f"model.norm_eps: expected a small positive number, got {self.norm_eps}")
        if self.rope_scaling is not None and self.rope_scaling != RopeScalingConfig(
                factor=self.rope_scaling.factor):
            # megatron-core 0.16 takes only the factor; the other Llama-3.1 constants are fixed in it.
            raise ConfigError(
                "model.rope_scaling: megatron-core supports low_freq_factor=1, high_freq_factor=4, "
                f"original_max_position_embeddings=8192 only; got {self.rope_scaling}")
        if self.fp8 is not None and self.dtype != "bf16":
            raise ConfigError(f"model.fp8: FP8 training needs model.dtype=bf16, got {self.dtype}")
        if self.fp8 is not None and self.attention_backend in ("sdpa", "local"):
            raise ConfigError(
                f"model.fp8: FP8 needs the Transformer Engine layers; "
                f"model.attention_backend={self.attention_backend} selects non-TE layers")
        if self.fp8 is not None and self.fp8.amax_history_len <= 0:
            raise ConfigError("model.fp8.amax_history_len: must be positive")


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple

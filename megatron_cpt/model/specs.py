"""The one place where the layer implementation is chosen: a megatron-core ModuleSpec.

- ``te``: Transformer Engine layers (fused RMSNorm+linear, FP8), when ``transformer_engine`` imports.
- ``sdpa``: megatron-core local layers with ``SDPAttention`` as the core attention.
- ``local``: megatron-core local layers (reference ``DotProductAttention``).
``auto`` picks ``te`` when Transformer Engine is installed, else ``sdpa``. An installed Transformer
Engine that fails to import is an error, never a silent fall-back to SDPA.

Both non-TE specs use ``SequenceParallelRMSNorm`` for every norm, the final one included, so they
support sequence parallelism; megatron-core's own non-TE norm refuses it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

import torch
from megatron.core.models.gpt.gpt_layer_specs import (get_gpt_layer_local_spec,
                                                      get_gpt_layer_with_transformer_engine_spec)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (TransformerBlockSubmodules,
                                                         get_num_layers_to_build)
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_cpt.errors import ConfigError
from megatron_cpt.model.rms_norm import SequenceParallelRMSNorm


def transformer_engine_available() -> bool:
    """True when Transformer Engine imports; False when it is not installed.

    Raises ConfigError when it is installed but its import fails (a CUDA or ABI mismatch, say):
    training on without it would lose FP8 and the fused kernels the recipe counted on.
    """
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure of an installed package is reported
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(
            f"model.attention_backend: transformer_engine is installed but fails to import "
            f"({type(exc).__name__}: {first_line}); repair it, or set "
            f"model.attention_backend=sdpa to train without it") from None
    return True


def resolve_attention_backend(requested: str) -> str:
    if requested == "auto":
        return "te" if transformer_engine_available() else "sdpa"
    if requested == "te" and not transformer_engine_available():
        raise ConfigError("model.attention_backend=te: transformer_engine is not installed here")
    return requested


def check_fp8_recipe_on_device(recipe: str, capability: tuple[int, int], device_name: str) -> None:
    """Refuse an FP8 recipe that this GPU cannot run (before any kernel fails obscurely)."""
    sm = f"sm_{capability[0]}{capability[1]}"
    if tuple(capability) < (8, 9):
        raise ConfigError(f"model.fp8: FP8 needs compute capability 8.9 or newer (Ada, Hopper, "
                          f"Blackwell); this GPU is {device_name} ({sm})")
    if recipe == "mxfp8" and tuple(capability) < (10, 0):
        raise ConfigError(
            f"model.fp8.recipe=mxfp8: MXFP8 needs Blackwell (compute capability 10.0 or newer); "
            f"this GPU is {device_name} ({sm}): use recipe delayed, tensorwise or blockwise")


# The oldest Transformer Engine each FP8 recipe runs with (megatron-core 0.16's fp8_utils, which
# otherwise fails at the first forward pass).
FP8_RECIPE_MIN_TE = {"delayed": "1.0", "mxfp8": "2.1.0", "tensorwise": "2.2.0.dev0",
                     "blockwise": "2.3.0.dev0"}


def check_fp8_recipe_for_te(recipe: str) -> None:
    """Refuse an FP8 recipe that the installed Transformer Engine does not have."""
    import transformer_engine
    from packaging.version import Version

    installed = (getattr(transformer_engine, "__version__", None)
                 or importlib.metadata.version("transformer-engine"))
    needed = FP8_RECIPE_MIN_TE[recipe]
    if Version(str(installed)) < Version(needed):
        raise ConfigError(f"model.fp8.recipe={recipe}: needs Transformer Engine >= {needed}, "
                          f"installed here is {installed}; use recipe delayed or a newer TE")


def gradient_accumulation_fusion_available() -> bool:
    """Whether megatron-core's fused weight-gradient accumulation kernels exist here.

    The output layer is megatron-core's own ``ColumnParallelLinear`` even in the TE spec, and it
    needs apex's ``fused_weight_gradient_mlp_cuda`` extension for the fusion (TE layers bring
    their own). The extension is CUDA-only, so this is also false on the CPU.
    """
    return (torch.cuda.is_available()
            and importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None)


def build_layer_spec(backend: str) -> ModuleSpec:
    """The spec of one transformer layer."""
    if backend == "te":
        return get_gpt_layer_with_transformer_engine_spec()
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    layer = spec.submodules
    layer.input_layernorm = SequenceParallelRMSNorm
    layer.pre_mlp_layernorm = SequenceParallelRMSNorm
    if backend == "sdpa":
        from megatron_cpt.model.sdpa_attention import SDPAttention

        layer.self_attention.submodules.core_attention = SDPAttention
    return spec


def build_decoder_spec(backend: str, config: TransformerConfig, vp_stage: int | None
                       ) -> ModuleSpec | TransformerBlockSubmodules:
    """What ``GPTModel(transformer_layer_spec=...)`` gets for one pipeline chunk.

    With TE, the layer spec (megatron-core adds TE's final norm itself). Otherwise the block's
    layers plus ``SequenceParallelRMSNorm`` as the final norm, which megatron-core would otherwise
    take from ``WrappedTorchNorm``.
    """
    layer = build_layer_spec(backend)
    if backend == "te":
        return layer
    layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * layers,
                                      layer_norm=SequenceParallelRMSNorm)

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

"""The one place where the layer implementation is chosen: a megatron-core ModuleSpec.

- ``te``: Transformer Engine layers (fused RMSNorm+linear, FP8), when ``transformer_engine`` imports.
- ``sdpa``: megatron-core local layers with ``SDPAttention`` as the core attention.
- ``local``: megatron-core local layers unchanged (reference ``DotProductAttention``).
``auto`` picks ``te`` when available, else ``sdpa``.
"""

from __future__ import annotations

import importlib.util

from megatron.core.models.gpt.gpt_layer_specs import (get_gpt_layer_local_spec,
                                                      get_gpt_layer_with_transformer_engine_spec)
from megatron.core.transformer.spec_utils import ModuleSpec


def transformer_engine_available() -> bool:
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # a broken TE install is the same as none
        return False
    return True


def resolve_attention_backend(requested: str) -> str:
    if requested == "auto":
        return "te" if transformer_engine_available() else "sdpa"
    if requested == "te" and not transformer_engine_available():
        raise RuntimeError("model.attention_backend=te: transformer_engine is not importable here")
    return requested


def build_layer_spec(backend: str) -> ModuleSpec:
    if backend == "te":
        return get_gpt_layer_with_transformer_engine_spec()
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    if backend == "sdpa":
        from megatron_cpt.model.sdpa_attention import SDPAttention

        spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec

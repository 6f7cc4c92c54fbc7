"""Which layer implementation a recipe's ``model.attention_backend`` resolves to here; imports
neither torch nor megatron-core, so that ``megatron-cpt train`` checks it before any rank starts
(``model/specs.py`` builds the chosen spec)."""

from __future__ import annotations

import importlib.util

from megatron_cpt.errors import ConfigError


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

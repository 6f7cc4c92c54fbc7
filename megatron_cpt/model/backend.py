"""Which layer implementation a recipe's ``model.attention_backend`` resolves to here; imports
neither torch nor megatron-core, so that ``megatron-cpt train`` checks it before any rank starts
(``model/specs.py`` builds the chosen spec)."""

from __future__ import annotations

import importlib.metadata
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


# The oldest Transformer Engine each FP8 recipe runs with (megatron-core 0.16's fp8_utils, which
# otherwise fails at the first forward pass).
FP8_RECIPE_MIN_TE = {"delayed": "1.0", "mxfp8": "2.1.0", "tensorwise": "2.2.0.dev0",
                     "blockwise": "2.3.0.dev0"}


def installed_te_version() -> str:
    import transformer_engine

    return str(getattr(transformer_engine, "__version__", None)
               or importlib.metadata.version("transformer-engine"))


def check_fp8_recipe_for_te(recipe: str) -> None:
    """Refuse an FP8 recipe that the installed Transformer Engine does not have."""
    from packaging.version import Version

    installed = installed_te_version()
    needed = FP8_RECIPE_MIN_TE[recipe]
    if Version(str(installed)) < Version(needed):
        raise ConfigError(f"model.fp8.recipe={recipe}: needs Transformer Engine >= {needed}, "
                          f"installed here is {installed}; use recipe delayed or a newer TE")


def te_cross_entropy_is_exact(te_version: str, loss_mask_varies: bool, micro_batch_size: int
                              ) -> bool:
    """Whether Transformer Engine's fused cross entropy gives this loss its true gradients.

    Its backward scales the row of each token by that token's gradient of the loss, which is the
    token's loss-mask value here (a masked sum, ``train/step.py``); megatron-core hands it that
    gradient as an [s, b] transposed view of a [b, s] tensor.
    - TE < 2.8 reads ONE value for all rows (fixed by TE PR #2139): every token gets the first
      token's mask value. Exact only when the mask is the same everywhere (CPT); a packed chat
      sequence starts with an untrained header token, so every gradient would be 0.
    - TE 2.8 - 2.10 read one value per row but index the gradient as if contiguous (made so by TE
      PR #2402 in 2.11); megatron-core's transposed view is contiguous only at micro-batch size 1.
    - TE >= 2.11: exact for any mask.
    """
    from packaging.version import Version

    version = Version(te_version)
    if not loss_mask_varies or version >= Version("2.11.0.dev0"):
        return True
    return version >= Version("2.8.0.dev0") and micro_batch_size == 1

"""Hugging Face ``config.json`` of a Llama-3 model <-> our ``ModelConfig``.

Reads both the classic layout (``rope_theta`` + ``rope_scaling``, as in the released Llama-3.1
files) and the ``rope_parameters`` layout of transformers 5; writes the classic one, which every
transformers version since 4.43 reads.
"""

from __future__ import annotations

from typing import Any, Optional

from megatron_cpt.errors import ConfigError
from megatron_cpt.config.model import ModelConfig, RopeScalingConfig

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
HF_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
OUR_TO_HF_DTYPE = {ours: hf for hf, ours in HF_DTYPES.items()}
# megatron-core 0.16 implements Llama-3.1 RoPE scaling with these constants fixed; only the factor varies.
_FIXED_LLAMA3_ROPE = dict(low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192)


def _field(config: dict, name: str, where: str):
    if name not in config:
        raise ConfigError(f"{where}: field '{name}' is missing")
    return config[name]


def _rope_from_hf(config: dict, where: str) -> tuple[float, Optional[RopeScalingConfig]]:
    params = config.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    scaling = config.get("rope_scaling") or (params if params.get("rope_type") not in (None, "default")
                                             else None)
    if not scaling:
        return theta, None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return theta, None
    if kind != "llama3":
        raise ConfigError(f"{where}: rope_scaling.rope_type '{kind}' is not supported "
                          f"(Llama-3 uses 'llama3' or none)")
    rope = RopeScalingConfig(
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
        high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(scaling.get("original_max_position_embeddings", 8192)))
    for name, value in _FIXED_LLAMA3_ROPE.items():
        if getattr(rope, name) != value:
            raise ConfigError(f"{where}: rope_scaling.{name}={getattr(rope, name)}: megatron-core 0.16 "
                              f"supports only {value} (the Llama-3.1 value)")
    return theta, rope


def hf_dtype_name(config: dict) -> Optional[str]:
    """Our dtype name for the checkpoint's ``torch_dtype`` / ``dtype`` field, if it names one."""
    value = config.get("dtype") or config.get("torch_dtype")
    return HF_DTYPES.get(str(value).replace("torch.", "")) if value else None


def model_config_from_hf(config: dict, *, where: str, dtype: Optional[str] = None,
                         vocab_divisor: Optional[int] = None) -> ModelConfig:
    """ModelConfig of a Hugging Face Llama ``config.json``; errors name the field."""
    architectures = config.get("architectures") or []
    if list(architectures) != ["LlamaForCausalLM"]:
        raise ConfigError(f"{where}: architectures={architectures}: only {list(SUPPORTED_ARCHITECTURES)} "
                          f"can be converted")
    if config.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act='{config['hidden_act']}': Llama uses 'silu'")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise ConfigError(f"{where}: {flag}=true is not supported (Llama-3 has no biases)")
    hidden = int(_field(config, "hidden_size", where))
    heads = int(_field(config, "num_attention_heads", where))
    head_dim = config.get("head_dim")
    if head_dim is not None and heads * int(head_dim) != hidden:
        raise ConfigError(f"{where}: head_dim={head_dim}: megatron-core needs "
                          f"hidden_size / num_attention_heads = {hidden // heads}")
    theta, rope = _rope_from_hf(config, where)
    cfg = ModelConfig(
        num_layers=int(_field(config, "num_hidden_layers", where)),
        hidden_size=hidden,
        ffn_hidden_size=int(_field(config, "intermediate_size", where)),
        num_attention_heads=heads,
        num_query_groups=int(config.get("num_key_value_heads") or heads),
        vocab_size=int(_field(config, "vocab_size", where)),
        max_position_embeddings=int(config.get("max_position_embeddings", 8192)),
        rope_theta=theta,
        rope_scaling=rope,
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        make_vocab_size_divisible_by=vocab_divisor or ModelConfig().make_vocab_size_divisible_by,
        dtype=dtype or hf_dtype_name(config) or "bf16",
    )
    try:
        cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return cfg


def hf_config_from_model(cfg: ModelConfig, dtype: str, base: Optional[dict] = None) -> dict[str, Any]:
    """``config.json`` for ``cfg``; fields of ``base`` (e.g. token ids) are kept unless they describe
    the architecture, which always comes from ``cfg``."""
    config = {k: v for k, v in (base or {}).items()
              if k not in ("rope_parameters", "rope_scaling", "dtype", "torch_dtype", "_name_or_path")}
    config.update(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_act="silu",
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups,
        head_dim=cfg.kv_channels,
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        rope_scaling=None if cfg.rope_scaling is None else {
            "rope_type": "llama3",
            "factor": cfg.rope_scaling.factor,
            "low_freq_factor": cfg.rope_scaling.low_freq_factor,
            "high_freq_factor": cfg.rope_scaling.high_freq_factor,
            "original_max_position_embeddings": cfg.rope_scaling.original_max_position_embeddings,
        },
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        torch_dtype=OUR_TO_HF_DTYPE[dtype],
    )
    config.setdefault("bos_token_id", None)
    config.setdefault("eos_token_id", None)
    config.setdefault("initializer_range", cfg.init_method_std)
    config.setdefault("use_cache", True)
    return dict(sorted(config.items()))


def generation_config_for(hf_config: dict) -> dict[str, Any]:
    """A minimal ``generation_config.json`` when the source had none: the token ids only."""
    fields = {k: hf_config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return {k: v for k, v in fields.items() if v is not None}

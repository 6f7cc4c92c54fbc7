"""Published Llama-3 hyper-parameters, and tiny shapes for tests and CPU demos.

Sources: the Llama 3 paper (arXiv 2407.21783, Table 3) and the released ``config.json`` files.
"""

from __future__ import annotations

from megatron_cpt.errors import ConfigError

_LLAMA3_COMMON = dict(
    vocab_size=128256,
    rope_theta=500000.0,
    norm_eps=1e-5,
    tie_embeddings=False,
    max_position_embeddings=8192,
)

PRESETS: dict[str, dict] = {
    "llama3-8b": dict(_LLAMA3_COMMON, num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
                      num_attention_heads=32, num_query_groups=8),
    "llama3-70b": dict(_LLAMA3_COMMON, num_layers=80, hidden_size=8192, ffn_hidden_size=28672,
                       num_attention_heads=64, num_query_groups=8),
    # Llama-3.1 differs only in RoPE scaling and the longer context.
    "llama3.1-8b": dict(_LLAMA3_COMMON, num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
                        num_attention_heads=32, num_query_groups=8, max_position_embeddings=131072,
                        rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                          original_max_position_embeddings=8192)),
    "llama3.1-70b": dict(_LLAMA3_COMMON, num_layers=80, hidden_size=8192, ffn_hidden_size=28672,
                         num_attention_heads=64, num_query_groups=8, max_position_embeddings=131072,
                         rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                           original_max_position_embeddings=8192)),
    # Same family, test-sized: GQA with 2 KV groups, 4 layers so that PP=2 and PP=4 split evenly.
    "llama3-tiny": dict(vocab_size=1000, rope_theta=500000.0, norm_eps=1e-5, tie_embeddings=False,
                        max_position_embeddings=1024, num_layers=4, hidden_size=64,
                        ffn_hidden_size=192, num_attention_heads=4, num_query_groups=2),
    "llama3-small": dict(vocab_size=8000, rope_theta=500000.0, norm_eps=1e-5, tie_embeddings=False,
                         max_position_embeddings=2048, num_layers=4, hidden_size=256,
                         ffn_hidden_size=768, num_attention_heads=8, num_query_groups=2),
}


def preset_fields(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset '{name}' (known: {', '.join(sorted(PRESETS))})")
    return dict(PRESETS[name])

"""Print the largest logit difference between the local-spec DotProductAttention and SDPAttention
on the same weights and tokens (one gloo rank).  python compare_attention_backends.py"""

import os


def main() -> None:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    import dataclasses

    import torch

    from megatron_cpt.config.model import ModelConfig
    from megatron_cpt.config.parallel import ParallelConfig
    from megatron_cpt.model.build import build_model
    from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel

    model = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=8,
                        num_query_groups=2, vocab_size=512, dtype="fp32", attention_backend="local")
    initialize_parallel(ParallelConfig(), seed=7)
    reference = build_model(model, ParallelConfig())[0].eval()
    fused = build_model(dataclasses.replace(model, attention_backend="sdpa"), ParallelConfig())[0].eval()
    fused.load_state_dict(reference.state_dict(), strict=False)
    tokens = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(48).unsqueeze(0).expand(2, -1)
    with torch.no_grad():
        a = reference(tokens, positions, None)
        b = fused(tokens, positions, None)
    print(f"max_abs_diff {(a - b).abs().max().item():.3e} logit_scale {a.abs().max().item():.3e}")
    destroy_parallel()


if __name__ == "__main__":
    main()

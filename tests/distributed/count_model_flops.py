"""Count the matrix-product FLOPs of one forward + backward pass of the tiny Llama (megatron-core,
SDPA spec, one gloo rank) with torch.utils.flop_counter.FlopCounterMode; print them as JSON beside
megatron_cpt.profile.flops' figures.   python count_model_flops.py

PyTorch's fused CPU attention kernel has no FLOP formula, so attention runs on SDPA's math backend,
whose matrix products FlopCounterMode sees; that backend computes the whole s x s score matrix.
"""

import json
import os


def main() -> None:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29519")
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from megatron_cpt.config.model import ModelConfig
    from megatron_cpt.config.parallel import ParallelConfig
    from megatron_cpt.model.build import build_model
    from megatron_cpt.profile.flops import flops_per_token
    from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel

    model = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=160, num_attention_heads=8,
                        num_query_groups=2, vocab_size=500, dtype="fp32", attention_backend="sdpa")
    batch, seq = 2, 48
    initialize_parallel(ParallelConfig(), seed=7)
    gpt = build_model(model, ParallelConfig())[0]
    tokens = torch.randint(0, model.vocab_size, (batch, seq + 1),
                           generator=torch.Generator().manual_seed(0))
    positions = torch.arange(seq).unsqueeze(0).expand(batch, -1)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        loss = gpt(tokens[:, :-1], positions, None, labels=tokens[:, 1:])
        loss.sum().backward()
    ours = flops_per_token(model, seq)
    print(json.dumps({
        "tokens": batch * seq, "counted": counter.get_total_flops(),
        "by_op": {str(op): n for op, n in counter.get_flop_counts()["Global"].items()},
        "model_per_token": ours.model, "scores_per_token": ours.attention_scores}))
    destroy_parallel()


if __name__ == "__main__":
    main()

"""One fine-tuning step on one packed sequence whose loss mask starts with untrained tokens (a
Llama-3 chat sequence does: its header is never trained), from the same initial weights three
times: with the cross entropy the model builder picks for this loss, with megatron-core's unfused
one, and with Transformer Engine's fused kernel forced on. Run on one rank:

    torchrun --standalone --nproc-per-node 1 tests/gpu/sft_fused_loss_step.py OUT.json [BACKEND]

BACKEND is the recipe's ``model.attention_backend`` (default ``te``). Writes OUT.json:
``{"te_version", "chosen_fused", "grad_norm": {"chosen", "unfused", "forced_fused"}}``
(``forced_fused`` only where Transformer Engine is installed).
"""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEQ = 256
# Three conversations; each one's first 24 labels (system prompt and header) are not trained.
BOUNDARIES = [0, 96, 176, SEQ]
UNTRAINED_PREFIX = 24


def packed_batch(vocab: int) -> dict:
    import torch

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (1, SEQ + 1), generator=generator)
    loss_mask = torch.ones(1, SEQ)
    position_ids = torch.zeros(1, SEQ, dtype=torch.long)
    for start, end in zip(BOUNDARIES[:-1], BOUNDARIES[1:]):
        loss_mask[0, start:start + UNTRAINED_PREFIX] = 0
        position_ids[0, start:end] = torch.arange(end - start)
    return {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": loss_mask,
            "position_ids": position_ids, "cu_seqlens": torch.tensor(BOUNDARIES, dtype=torch.int32)}


def one_step_grad_norm(recipe, fusion: str) -> tuple[float, bool]:
    """(grad norm, fused) of one step; ``fusion``: ``chosen`` (as training builds the model),
    ``unfused`` or ``forced_fused``."""
    import torch
    from megatron.core import tensor_parallel

    from megatron_cpt.model.build import build_model
    from megatron_cpt.runtime.parallel import build_optimizer, wrap_with_ddp
    from megatron_cpt.train.schedule import build_scheduler
    from megatron_cpt.train.step import train_step

    torch.manual_seed(recipe.train.seed)
    tensor_parallel.model_parallel_cuda_manual_seed(recipe.train.seed)
    chunks = build_model(recipe.model, recipe.parallel, loss_mask_varies=True,
                         micro_batch_size=recipe.train.micro_batch_size)
    config = chunks[0].config  # one TransformerConfig, read by the loss at every call
    if fusion == "unfused":
        config.cross_entropy_loss_fusion = False
    elif fusion == "forced_fused":
        config.cross_entropy_loss_fusion, config.cross_entropy_fusion_impl = True, "te"
    fused = config.cross_entropy_loss_fusion
    model = wrap_with_ddp(chunks, recipe.parallel)
    optimizer = build_optimizer(model, recipe.optim, recipe.parallel, recipe.model.dtype)
    scheduler = build_scheduler(optimizer, recipe.optim, recipe.train.steps)
    result = train_step(model, optimizer, scheduler, iter([packed_batch(recipe.model.vocab_size)]),
                        1, SEQ, 1, skip_nonfinite=False)
    del model, optimizer, chunks
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return float(result.grad_norm), fused


def main(out: str, backend: str = "te") -> None:
    import importlib.util

    from megatron_cpt.config.recipe import load_recipe
    from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel

    recipe = load_recipe(REPO / "examples" / "demo_llama3_tiny_sft_2xcpu.yaml", [
        "data.chat.prefixes=[unused]", "model.dtype=bf16", f"model.attention_backend={backend}",
        "parallel.tp=1", "launch.procs_per_node=1", "optim.schedule.warmup_steps=0",
        f"train.seq_length={SEQ}", "train.global_batch_size=1", "train.micro_batch_size=1"])
    initialize_parallel(recipe.parallel, recipe.train.seed)
    te_installed = importlib.util.find_spec("transformer_engine") is not None
    result = {"te_version": None, "grad_norm": {}}
    if te_installed:
        from megatron_cpt.model.backend import installed_te_version

        result["te_version"] = installed_te_version()
    for fusion in ("chosen", "unfused") + (("forced_fused",) if te_installed else ()):
        result["grad_norm"][fusion], fused = one_step_grad_norm(recipe, fusion)
        if fusion == "chosen":
            result["chosen_fused"] = fused
    destroy_parallel()
    Path(out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Packed conversations are isolated, at TP1, TP2 with sequence parallelism and PP2, and the loss is
the mean NLL over trained tokens across micro-batches and DP ranks. Two gloo ranks, fp32, the SDPA
spec; run by test_sft_isolation.py:

    python -m torch.distributed.run --standalone --nproc-per-node 2 check_packed_isolation.py

For each layout each rank of the last stage prints ``layout NAME rank R logits D1 losses D2 other_changed D3 unpacked D4`` (largest
differences on the tokens of one conversation: packed with others vs alone; packed vs packed with
the other conversations replaced; packed without the boundaries vs alone), then ``loss SFT DIRECT
TOKENS`` from the DP2 layout.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

SEQ, VOCAB, PAD = 64, 512, 0
LENGTHS = [20, 17, 25, 13, 30, 9, 22]


def conversations(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids and loss masks shaped like chat data: a prompt, then a trained answer."""
    rng = np.random.default_rng(seed)
    result = []
    for n in LENGTHS:
        ids = rng.integers(1, VOCAB, n)
        mask = np.zeros(n, dtype=np.uint8)
        mask[n // 2:] = 1
        result.append((ids, mask))
    return result


class InMemory:
    def __init__(self, items):
        self.items = items

    def get(self, index):
        return self.items[index]


def dataset(items, packs):
    from megatron_cpt.data.chat_dataset import PackedChatDataset
    from megatron_cpt.data.packing import Packing

    packing = Packing([np.array(p) for p in packs], SEQ, sum(len(items[i][0]) for p in packs for i in p))
    return PackedChatDataset(InMemory(items), packing, SEQ, PAD, len(packs), seed=None)


def forward(model_chunks, sample: dict, packed: bool, with_labels: bool):
    """Logits [s, vocab/TP] (or per-token losses [s]) of one sample on the last stage, else None."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_cpt.model.packed_sequences import packed_seq_params

    batch = {k: v.unsqueeze(0) for k, v in sample.items()}

    def step(iterator, model):
        b = next(iterator)
        params = packed_seq_params(b["cu_seqlens"], torch.device("cpu")) if packed else None
        out = model(b["tokens"], b["position_ids"], None,
                    labels=b["labels"] if with_labels else None, packed_seq_params=params)
        return out, lambda o: (o.sum() * 0, torch.tensor(1), {"out": o.detach()})

    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter([batch]), model=model_chunks,
            num_microbatches=1, seq_length=SEQ, micro_batch_size=1, forward_only=True)
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return outputs[0]["out"][0]


def isolation(model_chunks) -> list[float]:
    items = conversations(0)
    # Conversation 1 (17 tokens) after conversation 0 (20), with conversation 3 behind it.
    packed = dataset(items, [[0, 1, 3]])[0]
    alone = dataset(items, [[1]])[0]
    changed_items = list(items)
    for i in (0, 3):  # the neighbours get other tokens
        changed_items[i] = (np.random.default_rng(i + 10).integers(1, VOCAB, LENGTHS[i]), items[i][1])
    changed = dataset(changed_items, [[0, 1, 3]])[0]
    span, own = slice(20, 37), slice(0, 17)
    trained = packed["loss_mask"][span].bool()
    assert torch.equal(packed["position_ids"][span], torch.arange(17))  # positions restart
    # Every stage runs every forward pass; only the last one holds outputs to compare.
    runs = {(sample, packed_, labels): forward(model_chunks, data, packed_, labels)
            for sample, data in (("packed", packed), ("alone", alone), ("changed", changed))
            for packed_ in (True, False) for labels in (False, True)}
    if runs["packed", True, False] is None:
        return []
    logits, losses = ({name: runs[name, True, labels] for name in ("packed", "alone", "changed")}
                      for labels in (False, True))
    return [(logits["packed"][span] - logits["alone"][own]).abs().max().item(),
            (losses["packed"][span][trained] - losses["alone"][own][trained]).abs().max().item(),
            (logits["packed"][span] - logits["changed"][span]).abs().max().item(),
            (runs["packed", False, False][span] - logits["alone"][own]).abs().max().item()]


def loss_over_dp_and_microbatches(ddp_chunks, dp_rank: int) -> tuple[float, float, int]:
    """The SFT loss of a global batch of 4 packs (2 micro-batches on each of 2 DP ranks) and the
    mean NLL over its trained tokens, each conversation run alone and unpacked."""
    from megatron_cpt.config.train import TrainConfig
    from megatron_cpt.data.datasets import microbatches
    from megatron_cpt.train.step import evaluate

    items = conversations(2)
    packs = [[0, 1], [2], [3, 4, 5], [6]]  # unequal trained-token counts per rank and micro-batch
    data = dataset(items, packs)
    train = TrainConfig(global_batch_size=4, micro_batch_size=1, seq_length=SEQ)
    [(loss, count)] = evaluate(ddp_chunks, [microbatches(data, 0, train, dp_rank, 2)], 2, SEQ, 1)
    model = ddp_chunks[0].module
    nll, direct_count = 0.0, 0
    with torch.no_grad():
        for ids, mask in items:
            tokens = torch.from_numpy(ids).unsqueeze(0)
            logits = model(tokens, torch.arange(len(ids)).unsqueeze(0), None)[0]
            losses = F.cross_entropy(logits[:-1].double(), tokens[0, 1:], reduction="none")
            trained = torch.from_numpy(mask[1:]).bool()
            nll += losses[trained].sum().item()
            direct_count += int(trained.sum())
    assert count == direct_count, (count, direct_count)
    return loss, nll / direct_count, count


def say(line: str) -> None:
    """One write per line: the ranks share the pipe, and print() may split a line in two."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    import dataclasses

    from megatron.core import parallel_state

    from megatron_cpt.config.model import ModelConfig
    from megatron_cpt.config.parallel import ParallelConfig
    from megatron_cpt.model.build import build_model
    from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel, wrap_with_ddp

    model = ModelConfig(num_layers=4, hidden_size=64, ffn_hidden_size=128, num_attention_heads=8,
                        num_query_groups=2, vocab_size=VOCAB, dtype="fp32", attention_backend="sdpa",
                        max_position_embeddings=SEQ)
    layouts = {"tp1": ParallelConfig(), "tp2_sp": ParallelConfig(tp=2, sequence_parallel=True),
               "pp2": ParallelConfig(pp=2)}
    for name, parallel in layouts.items():
        initialize_parallel(parallel, seed=11)
        chunks = build_model(dataclasses.replace(model), parallel)
        for chunk in chunks:
            chunk.eval()
        diffs = isolation(chunks)
        if diffs:
            say(f"layout {name} rank {torch.distributed.get_rank()} logits {diffs[0]:.3e} "
                f"losses {diffs[1]:.3e} other_changed {diffs[2]:.3e} unpacked {diffs[3]:.3e}")
        if name == "tp1":  # DP2: both ranks hold the whole model
            sft, direct, tokens = loss_over_dp_and_microbatches(wrap_with_ddp(chunks, parallel),
                                                                parallel_state.get_data_parallel_rank())
            if parallel_state.get_data_parallel_rank() == 0:
                say(f"loss {sft!r} {direct!r} {tokens}")
        parallel_state.destroy_model_parallel()
    destroy_parallel()


if __name__ == "__main__":
    main()

"""Score one checkpoint's benchmark tasks at several layouts in one job of 2 ranks: TP2 (with
sequence parallelism) and TP1 (two data-parallel replicas, each scoring half the sequences).

    python -m torch.distributed.run --standalone --nproc-per-node=2 \\
        tests/distributed/score_layouts.py CKPT TASKS.yaml TOKENIZER OUT.json

Rank 0 writes ``{layout: [[log-likelihood of each choice] per item, per task]}`` to OUT.json.
"""

import dataclasses
import json
import sys

import torch.distributed as dist
from megatron.core import parallel_state

from megatron_cpt.checkpointing.dist_io import load_model_weights, read_meta
from megatron_cpt.config.loader import build_dataclass
from megatron_cpt.config.model import ModelConfig
from megatron_cpt.config.parallel import ParallelConfig
from megatron_cpt.eval.benchmark import prepare_benchmarks, score_benchmarks
from megatron_cpt.eval.cli import tasks_from_file
from megatron_cpt.model.build import build_model
from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel

LAYOUTS = {"tp2": ParallelConfig(tp=2), "tp1_dp2": ParallelConfig()}


def main(ckpt: str, tasks: str, tokenizer: str, out: str) -> None:
    model = build_dataclass(ModelConfig, read_meta(ckpt)["model"], "model")
    model = dataclasses.replace(model, dtype="fp32")
    benchmarks = prepare_benchmarks(tasks_from_file(tasks), tokenizer, False,
                                    model.max_position_embeddings, model.vocab_size)
    scores = {}
    for name, parallel in LAYOUTS.items():
        initialize_parallel(parallel, seed=0)  # the process group stays; megatron's groups change
        chunks = build_model(model, parallel, initialize=False)
        load_model_weights(chunks, ckpt)
        results = score_benchmarks(chunks, benchmarks, micro_batch_size=4)
        scores[name] = [[list(item.logprobs) for item in result.items] for result in results]
        parallel_state.destroy_model_parallel()
    if dist.get_rank() == 0:
        with open(out, "w") as handle:
            json.dump(scores, handle)
    destroy_parallel()


if __name__ == "__main__":
    main(*sys.argv[1:])

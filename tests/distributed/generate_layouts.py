"""Greedy generation on one checkpoint at several layouts in one job of 2 CPU ranks: TP1 (two
data-parallel replicas generating the same), TP2 and PP2.

    python tests/distributed/generate_layouts.py CKPT REQUESTS.json OUT.json

Started without ``RANK``, it starts the two ranks as the CLI does (``launch/local.py``: forked
from this process once torch and megatron-core are imported).

REQUESTS.json: ``[{"prompt": [ids], "stop": [ids], "temperature": T, "seed": S}, ...]`` (greedy
without a temperature), generated as one batch of 8 new tokens each; rank 0 writes ``{layout: [[generated ids] per request]}`` to OUT.json.
"""

import json
import os
import sys

import torch.distributed as dist
from megatron.core import parallel_state

from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel
from megatron_cpt.serve.decode import Sequence, generate_tokens
from megatron_cpt.serve.model import checkpoint_model, generation_layout, load_generation_model
from megatron_cpt.serve.sampling import SamplingParams

LAYOUTS = {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2)}


def main(ckpt: str, requests: str, out: str) -> None:
    model = checkpoint_model(ckpt, "fp32")
    sequences = [Sequence(tuple(r["prompt"]), SamplingParams(
                     max_new_tokens=8, stop_token_ids=tuple(r["stop"]),
                     temperature=r.get("temperature", 0.0), seed=r.get("seed")))
                 for r in json.load(open(requests))]
    generated = {}
    for name, (tp, pp) in LAYOUTS.items():
        parallel = generation_layout(model, tp, pp)
        initialize_parallel(parallel, seed=0)  # the process group stays; megatron's groups change
        chunks = load_generation_model(ckpt, model, parallel)
        generated[name] = generate_tokens(chunks, sequences, model.vocab_size)
        parallel_state.destroy_model_parallel()
    if dist.get_rank() == 0:
        with open(out, "w") as handle:
            json.dump(generated, handle)
    destroy_parallel()


if __name__ == "__main__":
    if "RANK" in os.environ:
        main(*sys.argv[1:])
    else:
        from megatron_cpt.launch.local import run_local

        sys.exit(run_local("generate_layouts", sys.argv[1:], 2, env={"CUDA_VISIBLE_DEVICES": ""}))

"""``megatron-cpt serve``: a checkpoint behind an OpenAI-compatible HTTP API and a chat page,
generating on the megatron-core model itself (no conversion) at any TP x PP, on GPUs or CPU ranks
(docs/SERVE.md).

    megatron-cpt serve --ckpt-dir outputs/demo/sft --tokenizer hf:outputs/demo/hf_chat --cpu   # after make demo
    megatron-cpt serve --ckpt-dir runs/cpt --tokenizer hf:/models/Meta-Llama-3-8B --tp 2 --port 8000 --api-key KEY

``--ckpt-dir`` takes a checkpoint, or a run (or its checkpoints folder): its newest whole
checkpoint. The server listens on 127.0.0.1:8000 unless ``--host``/``--port`` say otherwise and
serves ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` (streamed or not), ``/health``
and the chat page at ``/``. SIGTERM (or Ctrl-C) ends the requests in flight, then every rank.
Bad input is one line, exit status 2, and nothing is left running.
"""

from __future__ import annotations

import argparse

from megatron_cpt.errors import UserError
from megatron_cpt.serve.config import check_port_free
from megatron_cpt.serve.options import add_arguments, config_from_args, prepare, worker_argv

WORKER_MODULE = "megatron_cpt.serve.worker"


def register(verbs) -> None:
    parser = verbs.add_parser("serve", help="a checkpoint behind an OpenAI-compatible API",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run_serve_command)


def run_serve_command(args) -> int:
    import torch

    from megatron_cpt.conversion.host import HOST_ENV, run_on_host
    from megatron_cpt.launch.local import inside_distributed_job, run_local

    if args.cpu:
        run_on_host()
    config = config_from_args(args)
    if inside_distributed_job():
        from megatron_cpt.serve.worker import serve_this_rank

        return serve_this_rank(config)
    config, model, parallel, chat = prepare(config)
    check_port_free(config.host, config.port)
    ranks = config.tp * config.pp
    if torch.cuda.is_available() and ranks > torch.cuda.device_count():
        raise UserError(f"--tp x --pp = {ranks} ranks, but this node has "
                        f"{torch.cuda.device_count()} GPUs (add --cpu for CPU ranks)")
    print(f"serve: {config.ckpt_dir} as '{config.model_name}' on {ranks} "
          f"{'CPU' if args.cpu or not torch.cuda.is_available() else 'GPU'} rank(s) "
          f"(tp={config.tp} pp={config.pp})", flush=True)
    if ranks == 1:
        from megatron_cpt.serve.worker import serve_in_this_process

        return serve_in_this_process(config, model, parallel, chat)
    return run_local(WORKER_MODULE, worker_argv(config), ranks, env=HOST_ENV if args.cpu else None)

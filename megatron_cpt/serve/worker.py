"""One rank of ``megatron-cpt serve``: ``python -m megatron_cpt.serve.worker ARGS`` (the verb's own
arguments, the checkpoint resolved; ``megatron-cpt serve`` starts TP x PP of these).

Every rank builds its part of the model and loads the checkpoint. Global rank 0 listens (uvicorn
in a thread of its own) and runs the batcher in its main thread; the other ranks follow the
batches it broadcasts. On SIGTERM or SIGINT rank 0 stops accepting connections, lets uvicorn end
the requests in flight while the batcher still generates for them, then tells the other ranks to
stop; they ignore the signal themselves (the launcher passes it to every rank) and stop when told.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time

import torch.distributed as dist

from megatron_cpt.errors import UserError
from megatron_cpt.serve.options import add_arguments, config_from_args, prepare
from megatron_cpt.serve.config import ServeConfig

# Seconds uvicorn waits for requests in flight after a stop signal before it closes them.
GRACEFUL_S = 120


def _listen(config: ServeConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        raise UserError(f"--port {config.port}: cannot listen on {config.host}:{config.port} "
                        f"({exc.strerror})") from None
    return sock


def serve_this_rank(config: ServeConfig) -> int:
    """A rank of a distributed job (RANK and WORLD_SIZE set)."""
    from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel

    config, model, parallel, chat = prepare(config)
    leader = os.environ.get("RANK") == "0"
    sock = _listen(config) if leader else None
    stopping = _catch_stop_signals() if leader else threading.Event()
    initialize_parallel(parallel, seed=0)
    try:
        _serve(config, model, parallel, chat, sock, stopping)
    finally:
        destroy_parallel()
    return 0


def serve_in_this_process(config: ServeConfig, model, parallel, chat) -> int:
    """One rank (TP = PP = 1): this process, without starting others."""
    from megatron_cpt.conversion.mcore_io import single_rank_session

    sock = _listen(config)
    stopping = _catch_stop_signals()
    with single_rank_session():
        _serve(config, model, parallel, chat, sock, stopping)
    return 0


def _catch_stop_signals() -> threading.Event:
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    return stopping


def _ignore_stop_signals() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def _serve(config: ServeConfig, model, parallel, chat: dict, sock, stopping) -> None:
    from megatron_cpt.serve.batcher import follow
    from megatron_cpt.serve.model import load_generation_model

    chunks = load_generation_model(config.ckpt_dir, model, parallel)
    if dist.get_rank() != 0:
        # From here on rank 0 alone decides when to stop (a signal before this ends the rank, as
        # the launcher's SIGTERM ends the others when one rank fails at start).
        _ignore_stop_signals()
        follow(chunks, model.vocab_size)
        return
    _lead(config, model, chat, chunks, sock, stopping)


def _lead(config: ServeConfig, model, chat: dict, chunks, sock, stopping) -> None:
    import uvicorn

    from megatron_cpt.serve.app import ServedModel, create_app
    from megatron_cpt.serve.batcher import Batcher
    from megatron_cpt.serve.text import ServedTokenizer

    end_of_turn = tuple(i for i in (chat.get("end_of_turn_id"), chat.get("eod_id")) if i is not None)
    tokenizer = ServedTokenizer(config.tokenizer_dir, end_of_turn, chat.get("template"))
    stop_ids = tuple(dict.fromkeys(tokenizer.stop_token_ids + config.stop_token_ids))
    batcher = Batcher(chunks, tokenizer, model.vocab_size, config.max_batch_size)
    served = ServedModel(name=config.model_name, max_positions=model.max_position_embeddings,
                         vocab_size=model.vocab_size, tokenizer=tokenizer,
                         default_max_tokens=config.default_max_tokens, stop_token_ids=stop_ids,
                         submit=batcher.submit, api_key=config.api_key)
    server = uvicorn.Server(uvicorn.Config(create_app(served), log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=GRACEFUL_S))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="uvicorn")
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    if server.started:
        print(f"serve: listening on http://{config.host}:{config.port} ('{config.model_name}', "
              f"stop ids {list(stop_ids)})", file=sys.stderr, flush=True)

    def keep_going() -> bool:
        if stopping.is_set():
            server.should_exit = True
        return thread.is_alive()

    batcher.run(keep_going)
    thread.join()
    sock.close()
    print("serve: stopped", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from megatron_cpt.conversion.host import run_on_host
    from megatron_cpt.launch.local import run_rank

    parser = argparse.ArgumentParser(prog="python -m megatron_cpt.serve.worker", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.cpu:
        run_on_host()
    return run_rank(lambda: serve_this_rank(config_from_args(args)), "serve")


if __name__ == "__main__":
    sys.exit(main())

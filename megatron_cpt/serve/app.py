"""The HTTP face of the server (FastAPI): OpenAI's ``/v1/models``, ``/v1/completions`` and
``/v1/chat/completions`` (streamed as server-sent events or not), ``/health``, and the chat page at
``/``. Each generation request becomes a ``Job`` for the batcher; a request the server cannot take
is answered with OpenAI's error body and HTTP 400 (401 without the API key), and the server goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from megatron_cpt.serve.batcher import Job, Outcome
from megatron_cpt.serve.decode import Sequence
from megatron_cpt.serve.openai_schema import (ChatRequest, CompletionRequest, completion_body,
                                              error_body, new_id, usage)
from megatron_cpt.serve.sampling import SamplingParams
from megatron_cpt.serve.text import ServedTokenizer, stop_strings

CHAT_PAGE = Path(__file__).with_name("chat.html")


@dataclasses.dataclass(frozen=True)
class ServedModel:
    name: str
    max_positions: int
    vocab_size: int
    tokenizer: ServedTokenizer
    default_max_tokens: int
    stop_token_ids: tuple[int, ...]
    submit: Callable[[Job], None]
    api_key: Optional[str] = None


class BadRequest(Exception):
    def __init__(self, message: str, param: Optional[str] = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


def log_request(path: str, prompt_tokens: int, completion_tokens: int, seconds: float,
                status: int = 200) -> None:
    print(f"serve: {path} {status} prompt_tokens={prompt_tokens} "
          f"completion_tokens={completion_tokens} {seconds:.2f}s", file=sys.stderr, flush=True)


def create_app(served: ServedModel) -> FastAPI:
    app = FastAPI(title="megatron-cpt serve", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        log_request(request.url.path, 0, 0, 0.0, 400)
        return JSONResponse(error_body(f"{where}: {first.get('msg')}" if where else first.get("msg"),
                                       param=where or None), status_code=400)

    @app.exception_handler(BadRequest)
    async def bad(request: Request, exc: BadRequest):
        log_request(request.url.path, 0, 0, 0.0, exc.status)
        kind = "authentication_error" if exc.status == 401 else "invalid_request_error"
        return JSONResponse(error_body(str(exc), kind, exc.param), status_code=exc.status)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if served.api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization") != f"Bearer {served.api_key}":
                log_request(request.url.path, 0, 0, 0.0, 401)
                return JSONResponse(error_body("invalid or missing API key",
                                               "authentication_error"), status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/")
    async def chat_page():
        return FileResponse(CHAT_PAGE, media_type="text/html")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": served.name, "object": "model", "created": 0, "owned_by": "megatron-cpt",
             "max_model_len": served.max_positions}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        _check_model(served, body.model)
        if body.echo or body.logprobs is not None:
            raise BadRequest("echo and logprobs are not offered: this server generates text; "
                             "score log-likelihoods with `megatron-cpt eval` (docs/EVAL.md)",
                             "logprobs" if body.logprobs is not None else "echo")
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:  # lm-eval's local-completions sends batches of one
                raise BadRequest("prompt: one prompt per request", "prompt")
            prompt = prompt[0]
        ids = served.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise BadRequest("prompt: empty", "prompt")
        return await _answer(served, body, ids, request.url.path, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        _check_model(served, body.model)
        if body.logprobs:
            raise BadRequest("logprobs are not offered by this server", "logprobs")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content}
                    for m in body.messages]
        try:
            ids = served.tokenizer.encode_chat(messages)
        except ValueError as exc:
            raise BadRequest(str(exc), "messages") from None
        return await _answer(served, body, ids, request.url.path, chat=True)

    return app


def _check_model(served: ServedModel, name: str) -> None:
    if name != served.name:
        raise BadRequest(f"model: '{name}' is not served here; this server serves "
                         f"'{served.name}' (see /v1/models)", "model")


def _sampling(served: ServedModel, body, prompt_tokens: int) -> SamplingParams:
    room = served.max_positions - prompt_tokens
    requested = body.new_tokens
    if requested is not None and requested > room or room < 1:
        raise BadRequest(
            f"this model's maximum context length is {served.max_positions} tokens; the request "
            f"has {prompt_tokens} in the prompt and asks for {requested or 1} more", "max_tokens")
    return SamplingParams(
        max_new_tokens=requested or min(served.default_max_tokens, room),
        temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
        seed=body.seed if body.seed is not None else random.getrandbits(31),
        stop_token_ids=served.stop_token_ids)


async def _answer(served: ServedModel, body, ids: list[int], path: str, chat: bool):
    params = _sampling(served, body, len(ids))
    if any(not 0 <= i < served.vocab_size for i in ids):
        raise BadRequest("prompt: a token id outside the vocabulary", "prompt")
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()

    def emit(delta: str, outcome: Optional[Outcome]) -> None:  # on the batcher's thread
        try:
            loop.call_soon_threadsafe(pieces.put_nowait, (delta, outcome))
        except RuntimeError:  # the event loop is closed: nobody is waiting for this answer
            job.cancelled.set()

    job = Job(Sequence(tuple(ids), params), stop_strings(body.stop), emit)
    started = time.monotonic()
    served.submit(job)
    ident = new_id("chatcmpl" if chat else "cmpl")
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_events(served, job, pieces, ident, chat, include_usage, started,
                                         path), media_type="text/event-stream")
    outcome = None
    while outcome is None:  # the pieces of text are in outcome.text too
        _, outcome = await pieces.get()
    if outcome.error:
        log_request(path, outcome.prompt_tokens, 0, time.monotonic() - started, 500)
        return JSONResponse(error_body(outcome.error, "server_error"), status_code=500)
    log_request(path, outcome.prompt_tokens, outcome.completion_tokens,
                time.monotonic() - started)
    choice = ({"index": 0, "message": {"role": "assistant", "content": outcome.text},
               "finish_reason": outcome.finish_reason, "logprobs": None} if chat else
              {"index": 0, "text": outcome.text, "finish_reason": outcome.finish_reason,
               "logprobs": None})
    return completion_body(ident, served.name, [choice],
                           usage(outcome.prompt_tokens, outcome.completion_tokens), chat)


async def _events(served: ServedModel, job: Job, pieces: asyncio.Queue, ident: str, chat: bool,
                  include_usage: bool, started: float, path: str):
    def event(choice: dict, use: Optional[dict] = None) -> str:
        body = completion_body(ident, served.name, [choice] if choice else [], use, chat, True)
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def piece(delta: Optional[str], finish: Optional[str], first: bool = False) -> dict:
        if not chat:
            return {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        content = {"role": "assistant", "content": delta or ""} if first else (
            {"content": delta} if delta else {})
        return {"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}

    outcome: Optional[Outcome] = None
    try:
        if chat:
            yield event(piece("", None, first=True))
        while outcome is None:
            delta, outcome = await pieces.get()
            if delta:
                yield event(piece(delta, None))
        if outcome.error:
            yield f"data: {json.dumps(error_body(outcome.error, 'server_error'))}\n\n"
            return
        yield event(piece(None, outcome.finish_reason))
        if include_usage:
            yield event({}, usage(outcome.prompt_tokens, outcome.completion_tokens))
        yield "data: [DONE]\n\n"
    finally:
        if outcome is None:
            job.cancelled.set()  # the client went away
        log_request(path, len(job.sequence.prompt), outcome.completion_tokens if outcome else 0,
                    time.monotonic() - started, 200 if outcome else 499)

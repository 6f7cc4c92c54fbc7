"""The OpenAI face of ``megatron-cpt serve`` in one process, without a model: a stand-in batcher
answers each job with fixed tokens, so that request checking, the response shapes, streaming,
stop strings and the API key are tested through FastAPI's own test client."""

from __future__ import annotations

import dataclasses
import json
import shlex
import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from conversion_fixtures import write_tiny_tokenizer
from serve_fixtures import CHAT_TEMPLATE, END_OF_TURN

from megatron_cpt.serve.app import ServedModel, create_app
from megatron_cpt.serve.batcher import Job, Outcome
from megatron_cpt.serve.sampling import SamplingParams, choose_token
from megatron_cpt.serve.text import IncrementalText, ServedTokenizer

ANSWER = [40, 41, 42, END_OF_TURN, 43]  # "w40 w41 w42", then the end of turn


def _tokenizer(directory, template: bool) -> ServedTokenizer:
    directory.mkdir()
    write_tiny_tokenizer(directory, 1000)
    if template:
        config = json.loads((directory / "tokenizer_config.json").read_text())
        (directory / "tokenizer_config.json").write_text(
            json.dumps(config | {"chat_template": CHAT_TEMPLATE}))
    return ServedTokenizer(directory, (END_OF_TURN,))


def _fake_batcher(tokenizer: ServedTokenizer, seen: list[Job]):
    """Generates ANSWER for every job (up to its max tokens), on another thread as the real one."""
    def submit(job: Job) -> None:
        seen.append(job)

        def run():
            params = job.sequence.params
            text = IncrementalText(tokenizer, job.stop, params.stop_token_ids)
            tokens = []
            for token in ANSWER[: params.max_new_tokens]:
                tokens.append(token)
                delta = text.push(token)
                if delta:
                    job.emit(delta, None)
                if text.stopped_by_string or token in params.stop_token_ids:
                    break
            rest = text.finish()
            if rest:
                job.emit(rest, None)
            ended = text.stopped_by_string or tokens[-1] in params.stop_token_ids
            job.emit("", Outcome(text.text, len(job.sequence.prompt), len(tokens),
                                 "stop" if ended else "length"))
        threading.Thread(target=run).start()
    return submit


def _client(root, template=True, api_key=None):
    tokenizer = _tokenizer(root / "tok", template)
    seen: list[Job] = []
    served = ServedModel(name="tiny", max_positions=32, vocab_size=1000, tokenizer=tokenizer,
                         default_max_tokens=16, stop_token_ids=tokenizer.stop_token_ids,
                         submit=_fake_batcher(tokenizer, seen), api_key=api_key)
    return TestClient(create_app(served)), seen, tokenizer


@pytest.fixture(scope="module")
def chat_client(tmp_path_factory):
    return _client(tmp_path_factory.mktemp("chat"))


def _error(response, status=400) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]["message"]


def test_chat_answer_stops_at_the_end_of_turn_and_counts_tokens(chat_client):
    client, seen, _ = chat_client
    response = client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "system", "content": "w50"},
                                      {"role": "user", "content": "w30 w31"}],
        "temperature": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "w40 w41 w42"}
    assert body["choices"][0]["finish_reason"] == "stop"
    # w3 w5 w50 w4 w3 w6 w30 w31 w4 w3 w7: the template, generation prompt appended
    assert seen[-1].sequence.prompt == (3, 5, 50, 4, 3, 6, 30, 31, 4, 3, 7)
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    assert seen[-1].sequence.params.greedy and seen[-1].sequence.params.max_new_tokens == 16


def test_streamed_completion_and_stop_string(chat_client):
    client, seen, _ = chat_client
    with client.stream("POST", "/v1/completions", json={
            "model": "tiny", "prompt": "w31 w32", "stream": True, "stop": " w42",
            "max_tokens": 5, "seed": 7, "stream_options": {"include_usage": True}}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    text = "".join(c["text"] for e in events for c in e["choices"])
    assert text == "w40 w41"
    assert [c["finish_reason"] for e in events for c in e["choices"]][-1] == "stop"
    assert events[-1]["usage"]["completion_tokens"] == 3
    assert seen[-1].sequence.params.seed == 7 and seen[-1].sequence.params.max_new_tokens == 5


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "bogus: Extra inputs are not permitted"),
    ({"temperature": 3}, "temperature: Input should be less than or equal to 2"),
    ({"top_p": 0}, "top_p: Input should be greater than 0"),
    ({"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
    ({"n": 2}, "n: Input should be less than or equal to 1"),
    ({"model": "gpt-4"}, "model: 'gpt-4' is not served here"),
    ({"max_tokens": 31}, "maximum context length is 32 tokens; the request has 2 in the prompt"),
    ({"prompt": " ".join(["w5"] * 40)}, "maximum context length is 32 tokens"),
    ({"echo": True}, "echo and logprobs are not offered"),
    ({"prompt": [5, 1000]}, "prompt: a token id outside the vocabulary"),
    ({"prompt": [[5], [6]]}, "prompt: one prompt per request"),
])
def test_bad_requests_are_openai_400s_and_the_server_goes_on(chat_client, change, message):
    client, _, _ = chat_client
    request = {"model": "tiny", "prompt": "w31 w32", "max_tokens": 2} | change
    assert message in _error(client.post("/v1/completions", json=request))
    ok = client.post("/v1/completions", json={"model": "tiny", "prompt": "w31", "max_tokens": 2})
    assert ok.json()["choices"][0]["text"] == "w40 w41"


def test_prompt_as_token_ids_in_a_batch_of_one(chat_client):
    client, seen, _ = chat_client
    response = client.post("/v1/completions", json={"model": "tiny", "prompt": [[31, 32, 33]],
                                                     "max_tokens": 2, "temperature": 0})
    assert response.json()["choices"][0]["text"] == "w40 w41"
    assert seen[-1].sequence.prompt == (31, 32, 33)


def test_chat_without_a_template_and_the_api_key(tmp_path):
    client, _, _ = _client(tmp_path, template=False, api_key="k")
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "w1"}]}
    assert "invalid or missing API key" in _error(client.post("/v1/chat/completions", json=chat), 401)
    headers = {"Authorization": "Bearer k"}
    assert "no chat template" in _error(client.post("/v1/chat/completions", json=chat,
                                                    headers=headers))
    assert client.get("/v1/models", headers=headers).json()["data"][0]["id"] == "tiny"
    assert client.get("/health").json() == {"status": "ok"}


def test_sampling_is_seeded_and_respects_top_k_and_top_p():
    logits = torch.tensor([0.0, 5.0, 4.9, -1.0, 4.8])
    assert choose_token(logits, SamplingParams(), None) == 1
    draws = lambda params: [  # noqa: E731
        choose_token(logits, params, torch.Generator().manual_seed(seed)) for seed in range(40)]
    assert set(draws(SamplingParams(temperature=1.0, top_k=2))) == {1, 2}
    # p(1), p(2) ~ 0.35 each: top_p 0.5 keeps the two most likely only
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.5))) == {1, 2}
    assert len(set(draws(SamplingParams(temperature=1.0)))) >= 3
    first = draws(SamplingParams(temperature=1.0))
    assert first == draws(SamplingParams(temperature=1.0))


def test_waiting_requests_are_generated_in_batches(chat_client, monkeypatch):
    """The batcher takes every waiting request, up to its batch size, into one generation."""
    from megatron_cpt.serve import batcher as batcher_module
    from megatron_cpt.serve.decode import Sequence

    batches = []

    def generate(_chunks, sequences, _vocab, on_step):
        batches.append(len(sequences))
        generated = [[] for _ in sequences]
        for step in range(2):
            stop = on_step([40 + step] * len(sequences))
            for row, stopped in enumerate(stop):
                if not stopped:
                    generated[row].append(40 + step)
        return generated

    monkeypatch.setattr(batcher_module, "generate_tokens", generate)
    batcher = batcher_module.Batcher(None, chat_client[2], 1000, max_batch_size=2)
    outcomes = {}
    for index, stop in enumerate([(), ("w41",), ()]):
        params = SamplingParams(max_new_tokens=2)
        batcher.submit(Job(Sequence((5, 6), params), stop,
                           lambda delta, outcome, i=index: outcome and outcomes.update({i: outcome})))
    batcher.run(lambda: False)
    assert batches == [2, 1]
    assert [outcomes[i].text for i in range(3)] == ["w40 w41", "w40 ", "w40 w41"]
    assert [outcomes[i].finish_reason for i in range(3)] == ["length", "stop", "length"]


def test_a_failed_generation_answers_its_clients_then_fails(chat_client, monkeypatch):
    from megatron_cpt.serve import batcher as batcher_module
    from megatron_cpt.serve.decode import Sequence

    def generate(*_args):
        raise RuntimeError("lost a rank")

    monkeypatch.setattr(batcher_module, "generate_tokens", generate)
    batcher = batcher_module.Batcher(None, chat_client[2], 1000, max_batch_size=2)
    outcomes = []
    batcher.submit(Job(Sequence((5,), SamplingParams()), (), lambda _d, o: outcomes.append(o)))
    with pytest.raises(RuntimeError, match="lost a rank"):
        batcher.run(lambda: False)
    assert outcomes[0].error == "generation failed: lost a rank"


def test_a_fine_tuned_checkpoints_template_and_end_of_turn_serve_a_tokenizer_without_them(tmp_path):
    """``megatron_cpt.json`` ``chat`` of a fine-tuned checkpoint: its template where the tokenizer
    has none, its end of turn among the stop ids after the tokenizer's end of text."""
    directory = tmp_path / "tok"
    directory.mkdir()
    write_tiny_tokenizer(directory, 1000)
    tokenizer = ServedTokenizer(directory, (END_OF_TURN,), CHAT_TEMPLATE)
    assert tokenizer.encode_chat([{"role": "user", "content": "w30"}]) == [3, 6, 30, 4, 3, 7]
    assert tokenizer.stop_token_ids == (2, END_OF_TURN)


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("source", ["docs/SERVE.md", "README.md", "megatron_cpt/serve/cli.py"])
def test_the_documented_commands_parse_and_reach_the_ranks_unchanged(source):
    from megatron_cpt.cli import build_parser
    from megatron_cpt.serve import cli
    from megatron_cpt.serve.options import config_from_args, worker_argv

    text = cli.__doc__ if source.endswith(".py") else (REPO / source).read_text()
    commands = [line.split("megatron-cpt serve ", 1)[1] for line in text.splitlines()
                if "megatron-cpt serve --" in line]
    assert commands
    parser = build_parser("serve")
    for command in commands:
        config = config_from_args(parser.parse_args(["serve", *shlex.split(command, comments=True)]))
        config = dataclasses.replace(config, model_name="m")  # as resolved before the ranks start
        rank_args = parser.parse_args(["serve", *worker_argv(config)])
        assert config_from_args(rank_args) == config

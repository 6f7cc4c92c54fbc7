"""Generation and ``megatron-cpt serve`` on the tiny chat model (``serve_fixtures``), fp32.

Greedy generation on the checkpoint (``megatron_cpt/serve/decode.py``) equals transformers'
``generate`` on the Hugging Face model it was converted from, token for token, at TP1, TP2 and PP2:
plain prompts of different lengths in one batch, and a chat prompt rendered with the tokenizer's
chat template that stops at the end of turn; a seeded sampled sequence in the same batch gets the
same tokens at every layout.

Then the server as a user runs it, on 2 CPU ranks (TP2), asked by the ``openai`` Python client
and by the chat page in headless chromium. Greedy chat answers equal transformers'; streamed
answers equal the whole ones; two requests at once each get their own answer; a bad request is an
HTTP 400 and the server goes on; bad input at start is one line and exit 2; SIGTERM ends the
request in flight, then the launcher and both ranks, exit 0."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import torch
from conversion_fixtures import write_tiny_tokenizer
from harness import free_port, kill_tree
from serve_fixtures import END_OF_TURN

from megatron_cpt.cli import main

KEY = "test-key"
CHROMIUM = "/usr/bin/chromium"
NEW_TOKENS = 8


@functools.lru_cache(maxsize=1)
def _hf_model(hf: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()


def _reference(hf: Path, prompt: list[int], stop: list[int]) -> list[int]:
    model = _hf_model(hf)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=stop,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_tokens_equal_transformers_at_tp1_tp2_pp2(tiny_chat_checkpoint, tmp_path):
    """Before the server starts (one job of 2 ranks: TP1, TP2, PP2; tests/distributed/generate_layouts.py)."""
    from transformers import AutoTokenizer

    hf, ckpt = tiny_chat_checkpoint
    tokenizer = AutoTokenizer.from_pretrained(hf)
    chat = tokenizer.apply_chat_template(
        [{"role": "system", "content": "w50 w51"}, {"role": "user", "content": "w30 w31 w32"}],
        tokenize=False, add_generation_prompt=True)
    requests = [{"prompt": [5, 17, 42, 99, 3], "stop": [2]},
                {"prompt": [7, 8], "stop": [2]},
                {"prompt": tokenizer(chat, add_special_tokens=False)["input_ids"],
                 "stop": [2, END_OF_TURN]}]
    assert requests[2]["prompt"][:2] == [3, 5] and requests[2]["prompt"][-2:] == [3, 7]
    # Sampled with a seed in the same batch: the same tokens at every layout, not the greedy ones.
    sampled = {"prompt": [5, 17, 42, 99, 3], "stop": [], "temperature": 1.0, "seed": 3}
    (tmp_path / "requests.json").write_text(json.dumps(requests + [sampled]))
    script = Path(__file__).with_name("generate_layouts.py")
    proc = subprocess.run([sys.executable, str(script), str(ckpt), str(tmp_path / "requests.json"),
                           str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    generated = json.loads((tmp_path / "out.json").read_text())
    expected = [_reference(hf, r["prompt"], r["stop"]) for r in requests]
    assert all(len(e) >= 1 for e in expected)
    for layout in ("tp1", "tp2", "pp2"):
        assert generated[layout][:3] == expected, layout
        assert generated[layout][3] == generated["tp1"][3], layout
    assert len(generated["tp1"][3]) == NEW_TOKENS and generated["tp1"][3] != expected[0]


@pytest.fixture(scope="module")
def server(tiny_chat_checkpoint, tmp_path_factory):
    hf, ckpt = tiny_chat_checkpoint
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [sys.executable, "-m", "megatron_cpt", "serve", "--ckpt-dir", str(ckpt),
               "--tokenizer", f"hf:{hf}", "--tp", "2", "--cpu", "--port", str(port),
               "--api-key", KEY, "--model-name", "tiny", "--stop-token-id", str(END_OF_TURN)]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 240
        while "serve: listening on" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield proc, port, log, hf, ckpt
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
        proc.wait(timeout=60)


def _client(port: int):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, timeout=120, max_retries=0)


def _expected_answer(hf: Path, messages: list[dict]) -> str:
    """transformers' greedy answer on the Hugging Face model, stopped at the end of turn."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf)
    model = _hf_model(hf)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=NEW_TOKENS, eos_token_id=[2, END_OF_TURN], pad_token_id=0)
    return tokenizer.decode(out[0, ids.size(1):], skip_special_tokens=True)


CHATS = [[{"role": "user", "content": "w30 w31 w32"}],
         [{"role": "system", "content": "w50"}, {"role": "user", "content": "w60"},
          {"role": "assistant", "content": "w61 w62"}, {"role": "user", "content": "w63"}]]


def _ask(port: int, messages: list[dict]) -> str:
    response = _client(port).chat.completions.create(
        model="tiny", messages=messages, max_tokens=NEW_TOKENS, temperature=0)
    assert response.usage.completion_tokens <= NEW_TOKENS
    return response.choices[0].message.content


def test_chat_answers_equal_transformers_streamed_or_not_and_concurrent(server):
    proc, port, log, hf, _ = server
    expected = [_expected_answer(hf, messages) for messages in CHATS]
    assert all(expected)
    assert _ask(port, CHATS[0]) == expected[0]
    stream = _client(port).chat.completions.create(
        model="tiny", messages=CHATS[1], max_tokens=NEW_TOKENS, temperature=0, stream=True)
    chunks = [chunk.choices[0] for chunk in stream]
    assert len([c for c in chunks if c.delta.content]) >= 2
    assert "".join(c.delta.content or "" for c in chunks) == expected[1]
    assert chunks[-1].finish_reason in ("stop", "length")
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda m: _ask(port, m), CHATS))
    assert answers == expected
    assert "serve: /v1/chat/completions 200 prompt_tokens=" in log.read_text()


def test_bad_request_is_a_400_and_the_server_goes_on(server):
    from openai import BadRequestError

    _, port, _, _, _ = server
    with pytest.raises(BadRequestError) as caught:
        _client(port).chat.completions.create(model="other", messages=CHATS[0], max_tokens=2)
    assert "'other' is not served here" in caught.value.body["message"]
    with pytest.raises(BadRequestError) as caught:
        _client(port).completions.create(model="tiny", prompt="w30", max_tokens=2,
                                         extra_body={"bogus": 1})
    assert "bogus" in caught.value.body["message"]
    assert _client(port).completions.create(model="tiny", prompt="w30", max_tokens=2).usage \
        .completion_tokens >= 1


def _start_error(capsys, args: list[str]) -> str:
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_at_start_is_one_line(server, capsys, tmp_path):
    proc, port, _, hf, ckpt = server
    good = ["--ckpt-dir", str(ckpt), "--tokenizer", f"hf:{hf}"]
    assert "--ckpt-dir /nowhere: no such directory" in _start_error(
        capsys, ["--ckpt-dir", "/nowhere", "--tokenizer", f"hf:{hf}"])
    assert f"--tokenizer hf:{tmp_path}: no transformers tokenizer there" in _start_error(
        capsys, [*good[:2], "--tokenizer", f"hf:{tmp_path}"])
    other = tmp_path / "other"
    other.mkdir()
    write_tiny_tokenizer(other, 2000)
    assert "2000 tokens, more than the checkpoint's vocabulary of 1000" in _start_error(
        capsys, [*good[:2], "--tokenizer", f"hf:{other}"])
    assert "--tp/--pp: 3 does not divide the 4 attention heads" in _start_error(
        capsys, [*good, "--tp", "3"])
    assert proc.poll() is None  # it holds the port (else this command would start serving)
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in _start_error(
        capsys, [*good, "--port", str(port)])


TASK = """task: served_chat
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["w999"]
  max_gen_toks: {new_tokens}
  do_sample: false
metric_list:
  - metric: exact_match
"""


def test_lm_evaluation_harness_runs_a_generation_task(server, tmp_path, monkeypatch):
    """lm-evaluation-harness 0.4.13's ``local-chat-completions`` and ``local-completions`` models
    against the server: the first item's target is the model's own greedy answer, the second's is
    not, so exact match is 1/2 only if every answer came back whole and matched to its item."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    _, port, _, hf, _ = server
    questions = ["w30 w31 w32", "w70 w71"]
    right = _expected_answer(hf, [{"role": "user", "content": questions[0]}])
    rows = [{"question": questions[0], "answer": right},
            {"question": questions[1], "answer": "w998"}]
    data = tmp_path / "served_chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "served_chat.yaml").write_text(TASK.format(data=data, new_tokens=NEW_TOKENS))
    tasks = TaskManager(include_path=str(tmp_path), include_defaults=False)  # ours alone: fast
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    results = lm_eval.simple_evaluate(
        model="local-chat-completions",
        model_args=f"model=tiny,base_url=http://127.0.0.1:{port}/v1/chat/completions,"
                   f"num_concurrent=2,max_retries=1",
        tasks=["served_chat"], task_manager=tasks,
        apply_chat_template=True, num_fewshot=0, cache_requests=False)
    assert results["results"]["served_chat"]["exact_match,none"] == 0.5
    # local-completions sends the prompt as token ids (its own tokenizer: the served one).
    ids = AutoTokenizer.from_pretrained(hf)(questions[0], add_special_tokens=False)["input_ids"]
    right = AutoTokenizer.from_pretrained(hf).decode(_reference(hf, ids, [2, END_OF_TURN]),
                                                     skip_special_tokens=True)
    # lm-eval adds the tokenizer's end-of-text string ("w2") to the stop strings, and the tiny
    # vocabulary's words w2.. start with it: the answer ends where it first appears.
    rows[0]["answer"] = right.split("w2")[0]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model=tiny,base_url=http://127.0.0.1:{port}/v1/completions,"
                   f"tokenizer={hf},tokenizer_backend=huggingface,num_concurrent=1,max_retries=1",
        tasks=["served_chat"], task_manager=tasks,
        num_fewshot=0, cache_requests=False)
    assert results["results"]["served_chat"]["exact_match,none"] == 0.5


def _browser():
    """Debian's chromium driven by playwright (``playwright install`` cannot download here)."""
    if not Path(CHROMIUM).is_file():
        if os.environ.get("MEGATRON_CPT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    return sync_playwright()


def test_chat_page_streams_a_multi_turn_conversation_in_chromium(server):
    _, port, _, hf, _ = server
    with _browser() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#api-key", KEY)
            page.fill("#system", "w50")
            page.fill("#max-tokens", str(NEW_TOKENS))
            # Count the answer's updates: a streamed answer is written in several pieces.
            page.evaluate("""() => { window.updates = 0; new MutationObserver(
                (records) => { window.updates += records.length; }).observe(
                document.getElementById('log'), {childList: true, subtree: true,
                characterData: true}); }""")
            conversation = [{"role": "system", "content": "w50"}]
            for turn, question in enumerate(["w60", "w63"], start=1):
                page.fill("#question", question)
                page.click("#send")
                page.wait_for_selector(f".assistant[data-done='true'] >> nth={turn - 1}")
                shown = page.locator(".assistant").nth(turn - 1).inner_text()
                conversation.append({"role": "user", "content": question})
                assert shown == _expected_answer(hf, conversation), turn
                conversation.append({"role": "assistant", "content": shown})
            assert page.evaluate("window.updates") >= 6  # two turns each, then the pieces
            assert re.fullmatch(r"\d+\.\d tokens/s", page.inner_text("#speed"))
            assert page.inner_text("#model") == "tiny"
        finally:
            browser.close()


def test_sigterm_ends_the_request_in_flight_then_every_rank(server):
    proc, port, log, _, _ = server
    ranks = psutil.Process(proc.pid).children(recursive=True)
    assert len(ranks) >= 2
    stream = _client(port).completions.create(model="tiny", prompt="w30 w31", max_tokens=40,
                                              temperature=0, stream=True)
    chunks = iter(stream)
    first = next(chunks)
    proc.send_signal(signal.SIGTERM)
    rest = list(chunks)
    assert first.choices[0].text and rest[-1].choices[0].finish_reason in ("stop", "length")
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert "serve: stopped" in log.read_text()
    gone, alive = psutil.wait_procs(ranks, timeout=30)
    assert not alive, alive

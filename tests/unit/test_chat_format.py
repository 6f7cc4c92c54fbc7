"""Chat data: rendering in Llama-3's format equals Meta's reference ChatFormat (llama-models, whose
wheel carries Llama-3's tokenizer.model), a transformers chat_template renders what
apply_chat_template renders, trained-token counts equal hand counts, and every kind of bad input
is one line naming the file and line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chat_fixtures import LLAMA3_MODEL, MULTI_TURN, write_chat_jsonl, write_small_llama3
from llama_models.datatypes import RawMessage, StopReason
from llama_models.llama3 import tokenizer as llama3_tokenizer
from llama_models.llama3.chat_format import ChatFormat as ReferenceChatFormat

from megatron_cpt.cli import main
from megatron_cpt.data.chat_format import LLAMA3_CHAT_TEMPLATE, load_chat_format

LLAMA3 = f"tiktoken:{LLAMA3_MODEL}"
CONVERSATIONS = [MULTI_TURN, MULTI_TURN[1:3], MULTI_TURN[1:],
                 [{"role": "user", "content": "Write  two\n\nlines."},
                  {"role": "assistant", "content": "One,\n\ttwo; 3 + 4 = 7 <|eot_id|> as text"}]]


@pytest.fixture(scope="module")
def llama3():
    return load_chat_format(LLAMA3)


@pytest.fixture(scope="module")
def small_llama3(tmp_path_factory) -> str:
    return write_small_llama3(tmp_path_factory.mktemp("small_llama3") / "small.tiktoken")


@pytest.fixture(scope="module")
def reference():
    return ReferenceChatFormat(llama3_tokenizer.Tokenizer(LLAMA3_MODEL))


def _raw(messages):
    return [RawMessage(role=m["role"], content=m["content"],
                       **({"stop_reason": StopReason.end_of_turn} if m["role"] == "assistant" else {}))
            for m in messages]


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["multi", "single", "no-system", "text"])
def test_llama3_rendering_equals_the_reference_chat_format(llama3, reference, conversation):
    tokenizer = reference.tokenizer
    expected = [tokenizer.bos_id]
    for message in _raw(conversation):
        expected += reference.encode_message(message, None)[0]
    assert llama3.render(conversation).ids == expected
    # Asking for the next answer: the reference's dialog prompt ends with the assistant header.
    assert llama3.prompt_ids(conversation[:-1]) == reference.encode_dialog_prompt(
        _raw(conversation[:-1])).tokens
    assert llama3.end_of_turn_id == tokenizer.eot_id == 128009


def test_llama3_trained_tokens_are_the_assistant_contents_and_their_end_of_turn(llama3):
    rendered = llama3.render(MULTI_TURN)
    trained = [i for i, t in zip(rendered.ids, rendered.trained) if t]
    # By hand, Llama-3's pieces: "ls", " -", " list", " directory", " contents" | "cp", " -",
    # " 复" (two byte pieces), "制", "文件", "和", "目录"; each turn followed by <|eot_id|>.
    pieces = [llama3._encoding.decode_single_token_bytes(i) for i in trained]
    assert pieces == [piece.encode() for piece in (
        "ls", " -", " list", " directory", " contents", "<|eot_id|>", "cp", " -")] + [
        " 复".encode()[:3], " 复".encode()[3:]] + [piece.encode() for piece in (
            "制", "文件", "和", "目录", "<|eot_id|>")]
    assert rendered.trained_tokens == 15
    assert llama3.render(MULTI_TURN, train_on_all=True).trained_tokens == len(rendered.ids)


def test_template_tokenizer_renders_as_transformers_and_trains_the_answers(tmp_path, small_llama3):
    """The Llama-3 chat template that exports carry, in a transformers tokenizer of the same
    vocabulary (the first 4000 ranks of Llama-3's file, converted by transformers), renders what
    apply_chat_template renders, and the ids and trained tokens of Llama-3's own format."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = small_llama3.partition(":")[2]
    llama3 = load_chat_format(small_llama3)
    specials = sorted(llama3._encoding._special_tokens, key=llama3._encoding._special_tokens.get)
    converted = TikTokenConverter(vocab_file=str(ranks), extra_special_tokens=specials).converted()
    fast = PreTrainedTokenizerFast(tokenizer_object=converted, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>")
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    fast.save_pretrained(str(tmp_path / "hf"))
    hf = load_chat_format(f"hf:{tmp_path / 'hf'}")
    reference = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    for conversation in CONVERSATIONS[:3]:
        rendered = hf.render(conversation)
        assert rendered.ids == reference.apply_chat_template(conversation, return_dict=False)
        assert rendered.ids == llama3.render(conversation).ids
        assert rendered.trained == llama3.render(conversation).trained
    assert hf.end_of_turn_id == llama3.end_of_turn_id == 4000 + 9


GOOD = {"prompt": "What is ls?", "response": "ls - list directory contents"}
BAD_INPUT = [
    ({"messages": [{"role": "system", "content": "Hi."}, {"role": "user", "content": "ls?"}]},
     ":2: no assistant turn"),
    ({"messages": [{"role": "user", "content": "ls?"}, {"role": "tool", "content": "x"}]},
     ":2: messages[1].role: 'tool' is not one of system, user, assistant"),
    ({"messages": [{"role": "assistant", "content": "ls"}, {"role": "user", "content": "ls?"}]},
     ":2: messages[0].role: 'assistant' out of order: expected user"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "c"}]},
     ":2: messages[1].role: 'user' out of order: expected assistant"),
    ({"messages": [{"role": "user", "content": "ls?"}, {"role": "assistant", "content": " \n"}]},
     ":2: messages[1].content is empty"),
    ({"instruction": "", "output": "x"}, ":2: field 'instruction' is empty"),
    ({"prompt": "word " * 80, "response": "ok"},
     ":2: the conversation is "),  # N tokens, longer than --seq-length 64 (--too-long error; ...
]


@pytest.mark.parametrize("record, message", BAD_INPUT,
                         ids=["no-assistant", "unknown-role", "assistant-first", "user-twice",
                              "empty-content", "empty-instruction", "too-long"])
def test_bad_input_is_one_line_naming_file_and_line(tmp_path, capsys, small_llama3, record, message):
    source = write_chat_jsonl(tmp_path / "chat.jsonl", [GOOD, record])
    out = tmp_path / "out"
    status = main(["data", "prepare-chat", "--input", str(source), "--output-prefix",
                   str(out / "chat"), "--tokenizer", small_llama3, "--seq-length", "64",
                   "--too-long", "error", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith(f"megatron-cpt data: error: {source}{message}")
    if "conversation is" in message:
        assert "tokens, longer than --seq-length 64 (--too-long error;" in err
    assert not out.exists()


def test_a_tokenizer_without_a_chat_format_is_refused(tmp_path, capsys):
    import sentencepiece

    sentencepiece.SentencePieceTrainer.Train(
        sentence_iterator=iter(["ls lists directory contents"] * 50), model_prefix=str(tmp_path / "sp"),
        vocab_size=40, model_type="bpe", minloglevel=2)
    source = write_chat_jsonl(tmp_path / "chat.jsonl", [GOOD])
    for spec in (f"sp:{tmp_path / 'sp.model'}", f"hf:{_hf_without_template(tmp_path)}"):
        status = main(["data", "prepare-chat", "--input", str(source), "--output-prefix",
                       str(tmp_path / "out" / "chat"), "--tokenizer", spec, "--seq-length", "64"])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1, err
        assert f"tokenizer '{spec}': no chat format" in err
        assert not (tmp_path / "out").exists()


def _hf_without_template(tmp_path: Path) -> Path:
    from transformers import TokenizersBackend

    directory = tmp_path / "hf"
    directory.mkdir()
    (directory / "tokenizer.model").write_bytes((tmp_path / "sp.model").read_bytes())
    TokenizersBackend.from_pretrained(str(directory)).save_pretrained(str(directory))
    return directory


def test_layouts_counts_and_too_long_policies(tmp_path, capsys, llama3):
    long_answer = {"prompt": "Say it.", "response": "word " * 80}
    records = [{"messages": MULTI_TURN}, GOOD,
               {"instruction": "Name the command.", "input": "It copies files.", "output": "cp"},
               long_answer]
    source = write_chat_jsonl(tmp_path / "chat.jsonl", records)
    truncated = llama3.render([{"role": "user", "content": "Say it."},
                               {"role": "assistant", "content": "word " * 80}])
    for policy, kept in (("truncate", 4), ("drop", 3)):
        prefix = tmp_path / policy / "chat"
        assert main(["data", "prepare-chat", "--input", str(source), "--output-prefix", str(prefix),
                     "--tokenizer", LLAMA3, "--seq-length", "64", "--too-long", policy,
                     "--no-progress"]) == 0
        assert "1 longer than 64 tokens" in capsys.readouterr().out
        stats = json.loads(Path(f"{prefix}.stats.json").read_text())
        assert stats["conversations"] == kept and stats["longer_than_seq_length"] == 1
        assert stats["layouts"] == {"messages": 1, "prompt/response": 2,
                                    "instruction/input/output": 1}
        # Hand counts: 15 (above), "ls - list directory contents" 5 and "cp" 1, each with its
        # <|eot_id|>; a truncated conversation keeps the trained tokens of its first 64.
        kept_trained = sum(truncated.trained[:64]) if policy == "truncate" else 0
        assert stats["trained_tokens"] == 15 + 6 + 2 + kept_trained
        assert (stats["truncated"], stats["dropped"]) == ((1, 0) if policy == "truncate" else (0, 1))
        assert stats["max_length"] == 64 if policy == "truncate" else stats["max_length"] < 64

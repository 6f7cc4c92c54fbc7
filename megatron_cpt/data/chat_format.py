"""A tokenizer's chat format: conversations -> token ids plus the tokens the model is trained on.

    fmt = load_chat_format("hf:outputs/demo/tokenizer")          # or tiktoken:PATH/tokenizer.model
    rendered = fmt.render([{"role": "user", "content": "ls?"},
                           {"role": "assistant", "content": "ls - list directory contents"}])
    rendered.ids, rendered.trained                                # trained: content + end of turn

- ``hf:DIR`` with a ``chat_template`` (``tokenizer_config.json`` or ``chat_template.jinja``):
  transformers' own rendering (``apply_chat_template``). The assistant turns are located by
  rendering each conversation prefix (up to the assistant header, and through the turn) and the
  tokens overlapping those characters are trained: the content and what ends the turn.
- ``tiktoken:`` rank files are read as Llama-3 (``tokenizers.py``) and rendered in Llama-3's own
  format, token by token as Meta's reference ``ChatFormat`` does: ``<|begin_of_text|>``, then per
  message ``<|start_header_id|>ROLE<|end_header_id|>`` + ``\\n\\n``, the content (stripped of
  surrounding whitespace, as Llama-3's Hugging Face template does) and ``<|eot_id|>``.
- anything else has no chat format and is refused with one line saying what is missing.

Every format also gives the Jinja template that renders the same ids in transformers, written into
a chat model's export, and its end-of-turn id, a stop token for generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from megatron_cpt.data.tokenizers import (Tokenizer, is_rank_file, llama3_rank_file_encoding,
                                          load_tokenizer)
from megatron_cpt.errors import UserError

# Llama-3's format as a transformers chat template (content trimmed, as Meta's own template does).
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
LLAMA3_CHAT_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
LLAMA3_END_OF_TURN = "<|eot_id|>"

Messages = Sequence[dict]


@dataclass(frozen=True)
class RenderedConversation:
    ids: list[int]
    trained: list[bool]  # per token: the loss is computed on it

    @property
    def trained_tokens(self) -> int:
        return sum(self.trained)


class ChatFormat:
    """What every chat format provides; ``kind`` is ``llama3`` or ``hf-template``."""

    kind: str
    tokenizer: Tokenizer  # vocabulary size, end-of-document and beginning-of-text ids
    template: str  # a transformers chat template that renders the same ids
    end_of_turn: str
    end_of_turn_id: int

    def render(self, messages: Messages, train_on_all: bool = False) -> RenderedConversation:
        raise NotImplementedError

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The ids of ``messages`` followed by the assistant's header: what a model continues."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What a prepared dataset records of its format (and a chat model's export needs)."""
        return {"kind": self.kind, "tokenizer": self.tokenizer.name, "template": self.template,
                "end_of_turn": self.end_of_turn, "end_of_turn_id": self.end_of_turn_id,
                "eod_id": self.tokenizer.eod_id, "bos_id": self.tokenizer.bos_id}


class Llama3ChatFormat(ChatFormat):
    kind = "llama3"
    template = LLAMA3_CHAT_TEMPLATE
    end_of_turn = LLAMA3_END_OF_TURN

    def __init__(self, spec: str, path: Path):
        self.tokenizer = load_tokenizer(spec)
        self._encoding = llama3_rank_file_encoding(spec, path)
        special = self._encoding.encode_single_token
        self._start, self._end = special("<|start_header_id|>"), special("<|end_header_id|>")
        self.end_of_turn_id = special(LLAMA3_END_OF_TURN)
        self._blank_line = self._encoding.encode_ordinary("\n\n")

    def _header(self, role: str) -> list[int]:
        return [self._start, *self._encoding.encode_ordinary(role), self._end, *self._blank_line]

    def render(self, messages: Messages, train_on_all: bool = False) -> RenderedConversation:
        ids, trained = [self.tokenizer.bos_id], [train_on_all]
        for message in messages:
            header = self._header(message["role"])
            body = [*self._encoding.encode_ordinary(message["content"].strip()), self.end_of_turn_id]
            ids += header + body
            trained += [train_on_all] * len(header)
            trained += [train_on_all or message["role"] == "assistant"] * len(body)
        return RenderedConversation(ids, trained)

    def prompt_ids(self, messages: Messages) -> list[int]:
        return self.render(messages).ids + self._header("assistant")


class TemplateChatFormat(ChatFormat):
    """A Hugging Face tokenizer's own ``chat_template``, through transformers."""

    kind = "hf-template"

    def __init__(self, spec: str, directory: Path):
        from transformers import AutoTokenizer
        from transformers.utils import logging

        self.tokenizer = load_tokenizer(spec)
        logging.disable_progress_bar()
        self._hf = AutoTokenizer.from_pretrained(str(directory))
        if not self._hf.chat_template or not isinstance(self._hf.chat_template, str):
            raise UserError(f"tokenizer '{spec}': no chat format: {directory} has no chat_template "
                            "(in tokenizer_config.json or chat_template.jinja); add one, or use "
                            "a Llama-3 rank file as tiktoken:PATH")
        self.template = self._hf.chat_template
        self._spec = spec
        self.end_of_turn_id = self._find_end_of_turn()
        self.end_of_turn = self._hf.convert_ids_to_tokens(self.end_of_turn_id)

    def _text(self, messages: Messages, add_generation_prompt: bool = False) -> str:
        return self._hf.apply_chat_template(list(messages), tokenize=False,
                                            add_generation_prompt=add_generation_prompt)

    def _assistant_spans(self, messages: Messages, text: str) -> list[tuple[int, int]]:
        """Character spans of the assistant turns in ``text``: from the end of the generation
        prompt that precedes each one to the end of the conversation rendered through it."""
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._text(messages[:index], add_generation_prompt=True)
            through = self._text(messages[:index + 1])
            if not (text.startswith(before) and text.startswith(through)
                    and len(before) < len(through)):
                raise UserError(
                    f"tokenizer '{self._spec}': its chat_template renders the conversation up to "
                    f"message {index} differently from the start of the whole conversation, so "
                    "the assistant turns cannot be located")
            spans.append((len(before), len(through)))
        return spans

    def render(self, messages: Messages, train_on_all: bool = False) -> RenderedConversation:
        text = self._text(messages)
        encoded = self._hf(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        if train_on_all:
            return RenderedConversation(list(ids), [True] * len(ids))
        spans = self._assistant_spans(messages, text)
        trained = [any(start < span_end and end > span_start for span_start, span_end in spans)
                   for start, end in offsets]
        return RenderedConversation(list(ids), trained)

    def prompt_ids(self, messages: Messages) -> list[int]:
        return self._hf(self._text(messages, add_generation_prompt=True),
                        add_special_tokens=False)["input_ids"]

    def _find_end_of_turn(self) -> int:
        """The last special token of an assistant turn: what the model learns to stop with."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        rendered = self.render(probe)
        special = set(self._hf.all_special_ids) | {
            i for i, token in self._hf.added_tokens_decoder.items() if token.special}
        ends = [i for i, t in zip(rendered.ids, rendered.trained) if t and i in special]
        if not ends:
            raise UserError(f"tokenizer '{self._spec}': its chat_template ends an assistant turn "
                            "with no special token, so generation would not know where to stop")
        return ends[-1]


def load_chat_format(spec: str) -> ChatFormat:
    """The chat format of the tokenizer named by ``spec``; UserError when it has none."""
    backend, _, target = spec.partition(":")
    if backend == "hf":
        path = Path(target)
        return TemplateChatFormat(spec, path.parent if path.is_file() else path)
    if backend == "tiktoken" and is_rank_file(target):
        return Llama3ChatFormat(spec, Path(target))
    load_tokenizer(spec)  # an unknown or missing tokenizer is named as such first
    if backend == "tiktoken":
        raise UserError(f"tokenizer '{spec}': no chat format: tiktoken's own encodings have no "
                        "chat tokens; use a Llama-3 rank file (tiktoken:PATH/tokenizer.model) or "
                        "hf:DIR with a chat_template")
    raise UserError(f"tokenizer '{spec}': no chat format: a sentencepiece model carries no chat "
                    "template; use hf:DIR with a chat_template (data train-tokenizer writes one "
                    "beside the model)")

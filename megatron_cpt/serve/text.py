"""Text in and out of generation with the served model's transformers tokenizer: prompts and chat
messages (the tokenizer's chat template, generation prompt appended) to ids, and generated ids to
text as they come, held back while they may still be the start of a stop string or an unfinished
UTF-8 character."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from megatron_cpt.errors import UserError


class ServedTokenizer:
    def __init__(self, directory: Path, end_of_turn_ids: tuple[int, ...] = (),
                 chat_template: Optional[str] = None):
        """``chat_template``: the template a fine-tuned checkpoint records (``megatron_cpt.json``
        ``chat``), used when the tokenizer has none."""
        from transformers import AutoTokenizer
        from transformers.utils import logging

        logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(directory)
        except (OSError, ValueError) as exc:
            raise UserError(f"--tokenizer {directory}: transformers cannot load it ({exc})") from None
        if chat_template and not self.tokenizer.chat_template:
            self.tokenizer.chat_template = chat_template
        eos = self.tokenizer.eos_token_id
        self.stop_token_ids = tuple(dict.fromkeys(
            ([eos] if eos is not None else []) + list(end_of_turn_ids)))

    @property
    def has_chat_template(self) -> bool:
        return bool(self.tokenizer.chat_template)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_chat(self, messages: list[dict]) -> list[int]:
        if not self.has_chat_template:
            raise ValueError("the served tokenizer has no chat template: use /v1/completions, or "
                             "serve a tokenizer with one (a fine-tuned export's, docs/SFT.md)")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        return self.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class IncrementalText:
    """One answer's text as its tokens arrive; ``push`` returns the text that is now final."""

    def __init__(self, tokenizer: ServedTokenizer, stop: tuple[str, ...],
                 stop_token_ids: tuple[int, ...]):
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._stop_token_ids = stop_token_ids
        self._ids: list[int] = []
        self.text = ""  # the answer so far, cut at a stop string
        self._sent = 0
        self.stopped_by_string = False

    def push(self, token: int) -> str:
        if token not in self._stop_token_ids:
            self._ids.append(token)
        text = self._tokenizer.decode(self._ids)
        hold = max((len(s) - 1 for s in self._stop), default=0)
        for stop in self._stop:
            at = text.find(stop)
            if at >= 0:
                text, hold, self.stopped_by_string = text[:at], 0, True
        self.text = text
        ready = len(text) - hold
        while ready > self._sent and text[ready - 1] == "\ufffd":  # an unfinished character
            ready -= 1
        return self._take(ready)

    def finish(self) -> str:
        """The rest of the text, once no token follows."""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        if upto <= self._sent:
            return ""
        delta, self._sent = self.text[self._sent:upto], upto
        return delta


def stop_strings(stop: Optional[str | list[str]]) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)

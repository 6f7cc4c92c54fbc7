"""What makes an export of a fine-tuned checkpoint a chat model.

A checkpoint written by a ``data.chat`` run records the chat format its data was rendered in
(``megatron_cpt.json`` ``chat``: the transformers template, the end-of-turn token and id). The
export then gets:

- ``chat_template.jinja``: that template, so ``apply_chat_template`` renders the ids training saw
  (a ``chat_template`` key of the copied ``tokenizer_config.json`` is dropped, leaving one template);
- ``generation_config.json`` ``eos_token_id``: the end-of-document id and the end-of-turn id (Llama-3:
  ``[128001, 128009]``), so transformers' ``generate``, vLLM and TGI stop at the end of a turn.
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_cpt.errors import ConfigError


def with_end_of_turn(generation: dict, chat: dict) -> dict:
    """``generation`` (a generation_config) whose ``eos_token_id`` also holds the end of turn."""
    eos = generation.get("eos_token_id")
    ids = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    ids = ids + [i for i in (chat["eod_id"], chat["end_of_turn_id"]) if i not in ids]
    return generation | {"eos_token_id": ids}


def check_chat_tokenizer(tokenizer_dir: Path, chat: dict) -> None:
    """The tokenizer to be exported has the end-of-turn token at the id training used."""
    from tokenizers import Tokenizer

    tokenizer_json = tokenizer_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        return
    found = Tokenizer.from_file(str(tokenizer_json)).token_to_id(chat["end_of_turn"])
    if found != chat["end_of_turn_id"]:
        raise ConfigError(
            f"{tokenizer_dir}: its tokenizer has {chat['end_of_turn']} at id {found}, but the "
            f"checkpoint was fine-tuned on data where it is id {chat['end_of_turn_id']} "
            f"({chat['tokenizer']}); export with that tokenizer")


def write_chat_template(out: Path, chat: dict) -> None:
    """Add the training's chat template to the tokenizer copied into ``out``."""
    config_path = out / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.pop("chat_template", None) is not None:
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    (out / "chat_template.jinja").write_text(chat["template"], encoding="utf-8")

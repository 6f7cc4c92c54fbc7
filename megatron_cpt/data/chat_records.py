"""Chat JSONL records -> conversations, with errors that name the file, line and field.

Three layouts, told apart by their fields:

- ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`` (OpenAI style,
  multi-turn): an optional system message first, then user and assistant turns alternating,
  starting with the user and ending with the assistant.
- ``{"prompt": "...", "response": "..."}``: one user turn and one assistant turn.
- ``{"instruction": "...", "input": "...", "output": "..."}`` (``input`` optional): the user turn
  is the instruction, followed by a blank line and the input when there is one.

The single-turn layouts may carry a ``system`` field. Other fields are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cpt.data.documents import InputFile, decode_json_object
from megatron_cpt.errors import UserError

ROLES = ("system", "user", "assistant")
LAYOUTS = ("messages", "prompt/response", "instruction/input/output")
ORDER_RULE = ("an optional system message, then user and assistant turns alternating, starting "
              "with the user")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    layout: str  # one of LAYOUTS

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


def parse_conversation(source: InputFile, number: int, raw: bytes) -> Conversation:
    """The conversation of one JSON-lines record; UserError ``FILE:LINE: ...`` when it is bad."""
    where = f"{source.path}:{number}"
    record = decode_json_object(source, number, raw)
    if "messages" in record:
        conversation = Conversation(_messages(record["messages"], where), LAYOUTS[0])
    elif "prompt" in record:
        conversation = _single_turn(record, where, "prompt", "response", LAYOUTS[1])
    elif "instruction" in record:
        conversation = _single_turn(record, where, "instruction", "output", LAYOUTS[2])
    else:
        fields = ", ".join(sorted(record)) or "none"
        raise UserError(f"{where}: no conversation: expected a 'messages' list, 'prompt' and "
                        f"'response', or 'instruction' and 'output' (fields: {fields})")
    check_turn_order(conversation.messages, where,
                     "messages" if conversation.layout == LAYOUTS[0] else None)
    return conversation


def _text(value, where: str, name: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: {name} is {type(value).__name__}, expected a string")
    if not value.strip():
        raise UserError(f"{where}: {name} is empty")
    return value


def _messages(value, where: str) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: field 'messages' must be a non-empty list of "
                        "{'role': ..., 'content': ...} objects")
    messages = []
    for index, item in enumerate(value):
        name = f"messages[{index}]"
        if not isinstance(item, dict) or "role" not in item or "content" not in item:
            raise UserError(f"{where}: {name}: expected an object with 'role' and 'content'")
        role = item["role"]
        if role not in ROLES:
            raise UserError(f"{where}: {name}.role: {role!r} is not one of {', '.join(ROLES)}")
        messages.append(Message(role, _text(item["content"], where, f"{name}.content")))
    return tuple(messages)


def _single_turn(record: dict, where: str, ask: str, answer: str, layout: str) -> Conversation:
    if answer not in record:
        raise UserError(f"{where}: no assistant turn: field '{ask}' without '{answer}'")
    user = _text(record[ask], where, f"field '{ask}'")
    if layout == LAYOUTS[2] and record.get("input") not in (None, ""):
        user = user + "\n\n" + _text(record["input"], where, "field 'input'")
    messages = [Message("user", user), Message("assistant", _text(record[answer], where,
                                                                  f"field '{answer}'"))]
    if record.get("system") is not None:
        messages.insert(0, Message("system", _text(record["system"], where, "field 'system'")))
    return Conversation(tuple(messages), layout)


def check_turn_order(messages: tuple[Message, ...], where: str, field: str | None) -> None:
    """System first (optional), then user / assistant alternating, the assistant last."""
    def name(index: int) -> str:
        return f"{field}[{index}].role" if field else f"turn {index + 1}"

    expected = "user"
    for index, message in enumerate(messages):
        if message.role == "system" and index == 0:
            continue
        if message.role != expected:
            rule = ("only the first message may be the system's" if message.role == "system"
                    else f"expected {expected}")
            raise UserError(f"{where}: {name(index)}: {message.role!r} out of order: {rule} "
                            f"({ORDER_RULE})")
        expected = "assistant" if expected == "user" else "user"
    if not any(m.role == "assistant" for m in messages):
        raise UserError(f"{where}: no assistant turn: the conversation has nothing to train on")
    if messages[-1].role != "assistant":
        raise UserError(f"{where}: {name(len(messages) - 1)}: the conversation ends with a user "
                        "turn; the last message must be the assistant's")

"""Prompts: each choice of an item becomes one (context, continuation) pair whose log-likelihood is
scored, as lm-evaluation-harness scores its ``loglikelihood`` requests.

Letter scoring (the benchmarks' own prompts; C-Eval shown, 1-shot)::

    以下是中国关于会计考试的单项选择题，请选出其中的正确答案。\\n\\n     <- header
    EXAMPLE QUESTION\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\n答案：B\\n\\n     <- a dev example
    QUESTION\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\n答案：             <- context
    A | B | C | D                                                   <- the four continuations

Text scoring: the context is the question and its answer cue (``问题：Q\\n答案：``,
``Question: Q\\nAnswer:``; a jsonl task's bare question), each continuation is a choice's text
(after a space in English), and its log-likelihood is divided by its length in characters.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cpt.eval.tasks import LETTERS, NO_SUBJECT, Item, Task


@dataclass(frozen=True)
class Template:
    header: str  # before the examples; {title} is the subject's title
    question_prefix: str  # before each question
    cue: str  # after the (lettered) question, before the answer
    delimiter: str  # between the cue and the answer


LETTER_TEMPLATES = {
    "ceval": Template("以下是中国关于{title}考试的单项选择题，请选出其中的正确答案。\n\n", "", "\n答案：", ""),
    "cmmlu": Template("以下是关于{title}的单项选择题，请直接给出正确答案的选项。\n\n", "题目：", "\n答案是：",
                      ""),
    "mmlu": Template("The following are multiple choice questions (with answers) about {title}.\n\n",
                     "", "\nAnswer:", " "),
}
# jsonl tasks in each prompt language; a task without subjects has no title.
JSONL_LETTER = {"en": LETTER_TEMPLATES["mmlu"],
                "zh": Template("以下是关于{title}的单项选择题。\n\n", "", "\n答案：", "")}
UNTITLED_HEADER = {"en": "The following are multiple choice questions (with answers).\n\n",
                   "zh": "以下是单项选择题。\n\n"}
TEXT_TEMPLATES = {"en": Template("", "Question: ", "\nAnswer:", " "),
                  "zh": Template("", "问题：", "\n答案：", "")}
# A jsonl question is the whole context: the choice continues it directly.
JSONL_TEXT = {"en": Template("", "", "", " "), "zh": Template("", "", "", "")}


def template_of(task: Task) -> Template:
    config = task.config
    language = config.prompt_language
    if config.scoring == "text":
        return (JSONL_TEXT if config.format == "jsonl" else TEXT_TEMPLATES)[language]
    if config.format == "jsonl":
        return JSONL_LETTER[language]
    return LETTER_TEMPLATES[config.format]


def _body(template: Template, item: Item, lettered: bool) -> str:
    text = template.question_prefix + item.question
    if lettered:
        text += "".join(f"\n{LETTERS[i]}. {choice}" for i, choice in enumerate(item.choices))
    return text + template.cue


def _answer(item: Item, index: int, lettered: bool) -> str:
    return LETTERS[index] if lettered else item.choices[index]


def choice_requests(task: Task, item: Item) -> list[tuple[str, str]]:
    """(context, continuation) of each choice of ``item``, in choice order."""
    template = template_of(task)
    lettered = task.config.scoring == "letter"
    context = ""
    if template.header:
        title = task.titles.get(item.subject, item.subject)
        untitled = task.config.format == "jsonl" and item.subject == NO_SUBJECT
        context = (UNTITLED_HEADER[task.config.prompt_language] if untitled
                   else template.header.format(title=title))
    for example in task.examples.get(item.subject, ()):
        context += (_body(template, example, lettered) + template.delimiter
                    + _answer(example, example.answer, lettered) + "\n\n")
    context += _body(template, item, lettered)
    return [(context, template.delimiter + _answer(item, i, lettered))
            for i in range(len(item.choices))]


def choice_lengths(task: Task, item: Item) -> list[int]:
    """What each choice's log-likelihood is divided by: its length in characters (text scoring),
    else 1."""
    if task.config.scoring == "letter":
        return [1] * len(item.choices)
    return [len(choice) for choice in item.choices]

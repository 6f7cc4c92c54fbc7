"""EvalConfig: multiple-choice benchmarks scored by log-likelihood, in training and by
``megatron-cpt eval`` (docs/EVAL.md).

    eval:
      interval: 500                      # every 500 steps (0: never during training)
      tokenizer: hf:/models/Meta-Llama-3-8B
      prepend_bos: true
      tasks:
        - {format: ceval, path: /data/ceval-exam, shots: 5}
        - {format: mmlu, path: /data/mmlu/data, items_per_subject: 20}

Only what needs no disk is checked here; the files are read (and refused, naming them) before
any rank starts (``megatron_cpt.eval.tasks.load_task``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from megatron_cpt.config.data import NAME_PATTERN
from megatron_cpt.errors import ConfigError

FORMATS = ("ceval", "cmmlu", "mmlu", "jsonl")
# Splits with answers: C-Eval's test answers are not released, so its default is val.
DEFAULT_SPLIT = {"ceval": "val", "cmmlu": "test", "mmlu": "test", "jsonl": "test"}


@dataclass
class EvalTaskConfig:
    format: Literal["ceval", "cmmlu", "mmlu", "jsonl"]
    """How ``path`` is laid out: C-Eval, CMMLU or MMLU as released (per-subject CSV files in split
    folders), or JSONL lines ``{"question", "choices", "answer", "subject"?}``."""
    path: str
    """The release's folder (holding dev/, val/, test/); for jsonl a file, or a folder of
    SPLIT.jsonl files."""
    name: Optional[str] = None
    """Metric name (``eval_acc/<name>``); default: the format."""
    split: Optional[str] = None
    """The split scored; default val for C-Eval (its test answers are not released), else test."""
    shots: int = 0
    """Solved examples put before each question, the first ``shots`` of the subject's dev split."""
    scoring: Literal["letter", "text"] = "letter"
    """letter: the log-likelihood of the answer letter after the lettered choices; text: of each
    choice's text, divided by its length in characters."""
    subjects: Optional[list[str]] = None
    """Only these subjects (file names without the split suffix); default: all."""
    items_per_subject: Optional[int] = None
    """Only the first N items of each subject (bounds the cost of an in-training evaluation)."""
    language: Optional[Literal["zh", "en"]] = None
    """Prompt language; default zh for C-Eval and CMMLU, en for MMLU and jsonl."""

    @property
    def label(self) -> str:
        return self.name or self.format

    @property
    def split_name(self) -> str:
        return self.split or DEFAULT_SPLIT[self.format]

    @property
    def prompt_language(self) -> str:
        return self.language or ("zh" if self.format in ("ceval", "cmmlu") else "en")

    def validate(self, where: str) -> None:
        if not self.path:
            raise ConfigError(f"{where}.path: must name the task's files")
        if not NAME_PATTERN.match(self.label):
            raise ConfigError(f"{where}.name: '{self.label}' may hold only letters, digits, "
                              f"'_', '.' and '-' (it becomes the metric eval_acc/<name>)")
        if self.shots < 0:
            raise ConfigError(f"{where}.shots: must be >= 0, got {self.shots}")
        if self.items_per_subject is not None and self.items_per_subject < 1:
            raise ConfigError(f"{where}.items_per_subject: must be >= 1 when set, got "
                              f"{self.items_per_subject}")
        if self.subjects is not None and not self.subjects:
            raise ConfigError(f"{where}.subjects: an empty list selects nothing; leave it unset "
                              f"for all subjects")


@dataclass
class EvalConfig:
    interval: int = 0
    """Steps between benchmark evaluations during training (0: never)."""
    tokenizer: Optional[str] = None
    """The model's tokenizer (hf:DIR, sp:FILE.model, tiktoken:...): the prompts are text."""
    prepend_bos: bool = False
    """Start every prompt with the tokenizer's beginning-of-text id, as Llama-3 was trained (and
    as ``data prepare --prepend-bos`` writes documents)."""
    micro_batch_size: int = 4
    """Sequences per micro-batch of the scoring forward passes."""
    max_length: Optional[int] = None
    """Longest scored sequence in tokens; longer prompts lose their start (default:
    model.max_position_embeddings)."""
    tasks: list[EvalTaskConfig] = field(default_factory=list)

    def validate(self) -> None:
        if self.interval < 0:
            raise ConfigError(f"eval.interval: must be >= 0, got {self.interval}")
        if self.interval and not self.tasks:
            raise ConfigError("eval.tasks: eval.interval is set but no task is named")
        if self.tasks and not self.tokenizer:
            raise ConfigError("eval.tokenizer: the tasks are text; name the model's tokenizer "
                              "(e.g. hf:DIR or sp:FILE.model)")
        if self.micro_batch_size < 1:
            raise ConfigError(f"eval.micro_batch_size: must be >= 1, got {self.micro_batch_size}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"eval.max_length: must be >= 2 when set, got {self.max_length}")
        labels = []
        for index, task in enumerate(self.tasks):
            task.validate(f"eval.tasks[{index}]")
            if task.label in labels:
                raise ConfigError(f"eval.tasks[{index}].name: '{task.label}' names two tasks; "
                                  f"give each a distinct name")
            labels.append(task.label)

"""The user-error types: bad input from the user, printed by the CLI as one line with exit status 2.

This module imports nothing from the package, so every layer (config, data, checkpointing,
conversion, train) can raise these without pointing an import at the CLI.
"""


class UserError(Exception):
    """Bad input from the user: one line naming the field or file and what was expected."""


class ConfigError(UserError, ValueError):
    """A recipe field is missing, unknown, mistyped or inconsistent; the message names it."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint directory is missing, incomplete, corrupt, or does not fit the model."""


def one_line(exc: BaseException) -> str:
    """The error's message as the one line the user sees (some libraries' messages span several)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())

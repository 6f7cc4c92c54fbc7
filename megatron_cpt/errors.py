"""The user-error types: bad input from the user, printed by the CLI as one line with exit status 2
(a ``RunFailure`` carries its own status).

This module imports nothing from the package, so every layer (config, data, checkpointing,
conversion, train) can raise these without pointing an import at the CLI.
"""


class UserError(Exception):
    """Bad input from the user: one line naming the field or file and what was expected."""


class ConfigError(UserError, ValueError):
    """A recipe field is missing, unknown, mistyped or inconsistent; the message names it."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint directory is missing, incomplete, corrupt, or does not fit the model."""


class RunFailure(UserError):
    """A run failed on its environment (disk, permissions, a lost peer, memory), not on a bug: one
    line, and the exit status the job documents for it."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def one_line(exc: BaseException) -> str:
    """The error's message as the one line the user sees (some libraries' messages span several)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())

"""The server's settings (``megatron-cpt serve``), checked once before any rank starts: the
checkpoint (a checkpoint, a run's checkpoint folder or a run directory: its newest whole
checkpoint), the tokenizer, the layout against the model, the address."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Optional

from megatron_cpt.errors import UserError


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    ckpt_dir: str
    """A megatron-cpt checkpoint, a run's ``checkpoints`` folder, or a run directory."""
    tokenizer: str
    """A transformers tokenizer directory (``hf:DIR`` or ``DIR``)."""
    tp: int = 1
    pp: int = 1
    dtype: Optional[str] = None
    """Compute dtype (default: the checkpoint's)."""
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None
    """When set, requests must carry ``Authorization: Bearer KEY``."""
    model_name: Optional[str] = None
    """The name in ``/v1/models`` and in requests (default: the checkpoint's folder name)."""
    max_batch_size: int = 8
    """Requests generated together at most; waiting requests join the next batch."""
    default_max_tokens: int = 256
    """New tokens when a request does not say (capped by the model's positions)."""
    stop_token_ids: tuple[int, ...] = ()
    """Ids that end every answer, besides the tokenizer's end of text and the checkpoint's end
    of turn."""
    cpu: bool = False

    @property
    def tokenizer_dir(self) -> Path:
        return Path(self.tokenizer[3:] if self.tokenizer.startswith("hf:") else self.tokenizer)

    def resolved(self) -> "ServeConfig":
        """Checked, with the checkpoint resolved to one whole checkpoint and the model named."""
        from megatron_cpt.checkpointing.run_checkpoints import find_resume_checkpoint, is_complete

        for name in ("tp", "pp", "max_batch_size", "default_max_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port: {self.port} is not a port number")
        if self.tokenizer.split(":", 1)[0] in ("sp", "tiktoken"):
            raise UserError(f"--tokenizer {self.tokenizer}: serving needs a transformers tokenizer "
                            f"directory (hf:DIR), for its chat template")
        if not (self.tokenizer_dir / "tokenizer.json").is_file() and not (
                self.tokenizer_dir / "tokenizer_config.json").is_file():
            raise UserError(f"--tokenizer {self.tokenizer}: no transformers tokenizer there "
                            f"(tokenizer.json / tokenizer_config.json)")
        ckpt = Path(self.ckpt_dir)
        if not ckpt.is_dir():
            raise UserError(f"--ckpt-dir {ckpt}: no such directory")
        if not is_complete(ckpt):
            found = find_resume_checkpoint(ckpt / "checkpoints" if (ckpt / "checkpoints").is_dir()
                                           else ckpt)
            if found is None:
                raise UserError(f"--ckpt-dir {ckpt}: neither a whole checkpoint nor a run (or "
                                f"checkpoint folder) with one")
            ckpt = found
        return dataclasses.replace(self, ckpt_dir=str(ckpt),
                                   model_name=self.model_name or _default_name(ckpt))


def _default_name(ckpt: Path) -> str:
    """RUN/step_N for RUN/checkpoints/step_N, else the folder's name."""
    if ckpt.parent.name == "checkpoints":
        return f"{ckpt.parent.parent.name}/{ckpt.name}"
    return ckpt.name


def check_port_free(host: str, port: int) -> None:
    """One line naming ``--port`` when the address cannot be listened on."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})") from None

"""The warnings that megatron-core and torch print and that say nothing actionable to this product's
users; silenced in the CLI process and in every rank. Imports nothing heavy (the CLI calls it
before it knows whether torch is needed)."""

from __future__ import annotations

import warnings

_KNOWN = (
    ".*Transformer Engine and Apex are not installed.*",
    ".*Apex is not installed.*",
    ".*full scope is deprecated.*",
    ".*is deprecated. Please use `torch.distributed.*",
    ".*\\.grad attribute of a Tensor that is not a leaf.*",
    ".*Please use DTensor instead and we are deprecating ShardedTensor.*",
    ".*`load_state_dict` is deprecated and will be removed.*",
)


def quiet_known_warnings() -> None:
    for pattern in _KNOWN:
        warnings.filterwarnings("ignore", message=pattern)

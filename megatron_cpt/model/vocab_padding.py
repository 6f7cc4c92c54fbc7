"""Keep padded vocabulary rows out of the softmax.

The embedding and output tables are padded to a multiple of ``make_vocab_size_divisible_by x TP``
rows. megatron-core computes the cross entropy over every row, and a padding row (zeros in a
converted checkpoint) has logit 0, which adds ``exp(0)`` per padding row to the softmax
denominator: the loss of a converted model would no longer equal its Hugging Face loss. A forward
hook on the output layer sets the padding columns of this TP rank's logits to the dtype's lowest
value, so they get zero probability and zero gradient.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state


def mask_padded_logits(model, vocab_size: int, padded_vocab_size: int) -> None:
    """Install the hook on ``model.output_layer`` if this TP rank's shard holds padding columns."""
    if not getattr(model, "post_process", False) or padded_vocab_size == vocab_size:
        return
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    shard = padded_vocab_size // tp_size
    first = parallel_state.get_tensor_model_parallel_rank() * shard
    valid = min(max(vocab_size - first, 0), shard)
    if valid == shard:
        return

    def mask(_module, _inputs, output):
        logits, bias = output
        # Generation asks for the logits gathered over TP (every column); training keeps the shard.
        gathered = logits.size(-1) == padded_vocab_size != shard
        padding = torch.zeros(logits.size(-1), dtype=torch.bool, device=logits.device)
        padding[vocab_size if gathered else valid:] = True
        return logits.masked_fill(padding, torch.finfo(logits.dtype).min), bias

    model.output_layer.register_forward_hook(mask)

"""Training FLOPs per token of a Llama-style decoder (forward + backward), Megatron-LM's convention.

Notation: ``h`` hidden size, ``a`` attention heads, ``g`` KV groups, ``d = h / a`` head size,
``q = a d`` and ``k = g d`` the query and key/value projection widths, ``f`` the SwiGLU width,
``V`` the padded vocabulary, ``s`` the sequence length, ``L`` layers.

Only matrix products are counted, at 2 FLOPs per multiply-add; norms, RoPE, SiLU, softmax and the
loss are left out (they are O(h) per token, under 0.1% for Llama-3-8B). Per token and layer, the
forward pass does:

- attention projections: ``2 h (q + 2k)`` for Q, K and V (GQA: K and V have ``g`` heads), and
  ``2 q h`` for the output projection;
- attention scores: ``Q K^T`` and ``softmax(.) V``, each ``2 q s`` for a full ``s x s`` matrix.
  Causal masking leaves half of it, so ``2 q s`` for the two together;
- SwiGLU MLP: gate and up (``2 h f`` each) and down (``2 f h``): ``6 h f``;

and once per token, the vocabulary projection ``2 h V``.

The backward pass computes two products for each forward one (the gradient of the input and of the
weight), so training costs 3x the forward pass. Per token:

    6 [ L (h (q + 2k) + q s + q h + 3 h f) + h V ]

This is the formula of Megatron-LM's ``num_floating_point_operations`` (``training.py``) for a dense
GQA model with SwiGLU: causal attention counted at half the ``s x s`` matrix, the padded vocabulary,
no recomputation. These are *model* FLOPs, the numerator of MFU.

Activation recomputation repeats forward work; ``hardware`` adds it: ``full`` re-runs every layer's
forward pass (``(attention + mlp) / 3``), ``selective`` re-runs core attention (``scores / 3``).
Kernel-internal recomputation (flash attention's backward rebuilds the score matrix) is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cpt.config.model import ModelConfig, padded_vocab_size

FORWARD_AND_BACKWARD = 3  # forward, gradient of the input, gradient of the weight
FLOPS_PER_MAC = 2


@dataclass(frozen=True)
class FlopsPerToken:
    """FLOPs per input token of one training step (forward + backward), by part."""

    attention_projections: float  # Q, K, V and output projections, all layers
    attention_scores: float  # Q K^T and softmax(Q K^T) V with the causal half, all layers
    mlp: float  # SwiGLU gate, up and down projections, all layers
    logits: float  # the vocabulary projection
    recompute: float = 0.0  # forward work repeated by activation recomputation

    @property
    def model(self) -> float:
        return self.attention_projections + self.attention_scores + self.mlp + self.logits

    @property
    def hardware(self) -> float:
        return self.model + self.recompute


def flops_per_token(model: ModelConfig, seq_length: int, tp: int = 1,
                    recompute: str | None = None) -> FlopsPerToken:
    """Model FLOPs per token (and the recomputation on top) for ``model`` at ``seq_length``.

    ``tp`` only sets the vocabulary padding (``make_vocab_size_divisible_by x tp`` rows), which the
    output layer really computes. ``recompute`` defaults to ``model.recompute``.
    """
    h, layers = model.hidden_size, model.num_layers
    q = model.kv_channels * model.num_attention_heads
    kv = model.kv_channels * model.num_query_groups
    vocab = padded_vocab_size(model.vocab_size, model.make_vocab_size_divisible_by, tp)
    scale = FORWARD_AND_BACKWARD * FLOPS_PER_MAC
    projections = scale * layers * (h * (q + 2 * kv) + q * h)
    scores = scale * layers * (q * seq_length / 2 * 2)  # causal half of QK^T and of (QK^T)V
    mlp = scale * layers * 3 * h * model.ffn_hidden_size
    logits = scale * h * vocab
    recompute = model.recompute if recompute is None else recompute
    if recompute == "full":
        repeated = (projections + scores + mlp) / FORWARD_AND_BACKWARD
    elif recompute == "selective":
        repeated = scores / FORWARD_AND_BACKWARD
    elif recompute == "none":
        repeated = 0.0
    else:
        raise ValueError(f"recompute: expected none, selective or full, got {recompute!r}")
    return FlopsPerToken(projections, scores, mlp, logits, repeated)

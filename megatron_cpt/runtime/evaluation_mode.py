"""Forward passes that evaluate the model in the middle of training (validation loss, benchmark
accuracy) or outside it (``megatron-cpt eval``), one context for all of them:

- the current weights: under ``overlap_param_gather`` megatron-core's forced all-gather first
  (``sync_parameters``); its forward-only schedules clear the model config's ``param_sync_func``
  themselves, so no further all-gather runs during the evaluation;
- no FP8: evaluation runs in the recipe's compute dtype, as ``megatron-cpt eval`` scores a
  checkpoint, so in-training results compare with standalone ones; under delayed scaling, FP8
  forward passes would also add the evaluation's amax values to the history that training scales
  with. A model whose weights are themselves FP8 (``model.fp8.param_gather``) has no higher
  precision copy to run, and evaluates in FP8;
- no dropout (``eval()``) and no autograd graph; the chunks' training mode and the config are
  restored afterwards.
"""

from __future__ import annotations

import contextlib

import torch

from megatron_cpt.runtime.parallel import sync_parameters


@contextlib.contextmanager
def evaluation_mode(chunks):
    sync_parameters(chunks)
    # One TransformerConfig, shared by every chunk and layer, read at each forward pass.
    config = getattr(chunks[0], "module", chunks[0]).config
    fp8 = config.fp8
    if not config.fp8_param:
        config.fp8 = None
    modes = [chunk.training for chunk in chunks]
    for chunk in chunks:
        chunk.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        config.fp8 = fp8
        for chunk, mode in zip(chunks, modes):
            chunk.train(mode)

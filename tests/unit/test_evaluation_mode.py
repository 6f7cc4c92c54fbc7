"""The evaluation context on stand-in chunks: FP8 off inside it unless the weights themselves are
FP8, the config and each chunk's training mode restored after it, also after an error. (Its
all-gathers and FP8 contexts on a real interleaved model: tests/distributed/
test_overlap_param_gather.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from megatron_cpt.runtime.evaluation_mode import evaluation_mode


def _chunks(fp8_param: bool):
    config = SimpleNamespace(fp8="hybrid", fp8_param=fp8_param)
    chunks = [torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]
    for chunk in chunks:
        chunk.config = config
    chunks[1].eval()
    return chunks, config


@pytest.mark.parametrize("fp8_param,inside", [(False, None), (True, "hybrid")])
def test_fp8_is_off_inside_unless_the_weights_are_fp8(fp8_param, inside):
    chunks, config = _chunks(fp8_param)
    with evaluation_mode(chunks):
        assert config.fp8 == inside
        assert not any(chunk.training for chunk in chunks)
        assert not torch.is_grad_enabled()
    assert config.fp8 == "hybrid" and [c.training for c in chunks] == [True, False]


def test_restored_after_an_error():
    chunks, config = _chunks(False)
    with pytest.raises(RuntimeError):
        with evaluation_mode(chunks):
            raise RuntimeError("a rank failed mid-evaluation")
    assert config.fp8 == "hybrid" and chunks[0].training

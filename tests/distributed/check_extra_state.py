"""Checkpoints with and without ``_extra_state`` (Transformer Engine's FP8 state) load into models
whose layers ask for it and into models whose layers do not (one gloo rank). Prints one JSON line.

    python tests/distributed/check_extra_state.py WORK_DIR

The layers with extra state are built through a megatron-core spec, as TE's are: the core attention
and the final norm of the ``sdpa`` spec, subclassed to carry an FP8-like amax history that they
serialise into a uint8 tensor the way Transformer Engine does.
"""

import io
import json
import os
import sys
from pathlib import Path


def main(work: Path) -> None:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29519")
    import dataclasses

    import torch
    from megatron.core import dist_checkpointing
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

    from megatron_cpt.checkpointing.dist_io import (load_model_weights, model_sharded_state_dict,
                                                   save_dist_checkpoint)
    from megatron_cpt.config.model import ModelConfig
    from megatron_cpt.config.parallel import ParallelConfig
    from megatron_cpt.errors import CheckpointError
    from megatron_cpt.model import build
    from megatron_cpt.model.rms_norm import SequenceParallelRMSNorm
    from megatron_cpt.model.sdpa_attention import SDPAttention
    from megatron_cpt.model.specs import build_layer_spec
    from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel

    class Fp8State:
        """get/set_extra_state as Transformer Engine modules define them."""

        def _init_fp8_state(self):
            self.amax_history = torch.zeros(4)
            self.restored = False

        def get_extra_state(self):
            buffer = io.BytesIO()
            torch.save({"amax_history": self.amax_history}, buffer)
            return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)

        def set_extra_state(self, state):
            if state is None or state.numel() == 0:
                return
            self.amax_history = torch.load(io.BytesIO(state.numpy().tobytes()))["amax_history"]
            self.restored = True

    class Fp8Attention(Fp8State, SDPAttention):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_fp8_state()

    class Fp8Norm(Fp8State, SequenceParallelRMSNorm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_fp8_state()

    plain_decoder_spec = build.build_decoder_spec

    def fp8_decoder_spec(backend, config, vp_stage):
        layer = build_layer_spec("sdpa")
        layer.submodules.self_attention.submodules.core_attention = Fp8Attention
        return TransformerBlockSubmodules(layer_specs=[layer] * config.num_layers, layer_norm=Fp8Norm)

    cfg = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                      num_query_groups=2, vocab_size=256, dtype="fp32", attention_backend="sdpa")
    parallel = ParallelConfig()

    def make(with_state: bool, seed: int):
        torch.manual_seed(seed)
        build.build_decoder_spec = fp8_decoder_spec if with_state else plain_decoder_spec
        try:
            return build.build_model(cfg, parallel)
        finally:
            build.build_decoder_spec = plain_decoder_spec

    def save(chunks, name: str) -> Path:
        return save_dist_checkpoint(model_sharded_state_dict(chunks), work / name,
                                    {"kind": "initial", "model": dataclasses.asdict(cfg)})

    def weights(chunks) -> dict:
        return {k: v for k, v in chunks[0].state_dict().items() if isinstance(v, torch.Tensor)
                and not k.endswith("_extra_state")}

    def equal(a, b) -> bool:
        wa, wb = weights(a), weights(b)
        return sorted(wa) == sorted(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)

    def fp8_modules(chunks):
        return [m for m in chunks[0].modules() if isinstance(m, Fp8State)]

    def extra_keys(chunks) -> int:
        return sum(1 for k in model_sharded_state_dict(chunks)["model"]
                   if k.endswith("_extra_state") and ("core_attention" in k or "final_layernorm" in k))

    initialize_parallel(parallel, seed=1)
    facts = {}
    plain = make(False, seed=1)
    plain_ckpt = save(plain, "plain")
    fp8 = make(True, seed=2)
    facts["fp8_model_extra_state_keys"] = extra_keys(fp8)
    facts["plain_model_extra_state_keys"] = extra_keys(plain)
    facts["differ_before_load"] = not equal(plain, fp8)
    # megatron-core alone refuses this load (the reason for the handling under test).
    try:
        dist_checkpointing.load(model_sharded_state_dict(fp8), str(plain_ckpt))
        facts["mcore_plain_load_fails"] = False
    except BaseException:  # noqa: BLE001 - torch's CheckpointException is a BaseException
        facts["mcore_plain_load_fails"] = True

    # 1. Without extra state -> layers that ask for it: weights equal, FP8 state stays fresh.
    load_model_weights(fp8, plain_ckpt)
    facts["plain_into_fp8_equal"] = equal(plain, fp8)
    facts["plain_into_fp8_fresh"] = all(not m.restored and not m.amax_history.any()
                                        for m in fp8_modules(fp8))

    # 2. With extra state -> layers without it: weights equal.
    for index, module in enumerate(fp8_modules(fp8)):
        module.amax_history = torch.arange(4.0) + index
    fp8_ckpt = save(fp8, "fp8")
    plain_again = make(False, seed=3)
    load_model_weights(plain_again, fp8_ckpt)
    facts["fp8_into_plain_equal"] = equal(fp8, plain_again)

    # 3. With extra state -> layers with it: weights and FP8 state restored.
    fp8_again = make(True, seed=4)
    load_model_weights(fp8_again, fp8_ckpt)
    facts["fp8_into_fp8_equal"] = equal(fp8, fp8_again)
    facts["fp8_into_fp8_state_restored"] = all(
        m.restored and torch.equal(m.amax_history, torch.arange(4.0) + i)
        for i, m in enumerate(fp8_modules(fp8_again)))

    # 4. A missing weight (not extra state) is still an error that names it.
    tied = save(build.build_model(dataclasses.replace(cfg, tie_embeddings=True), parallel), "tied")
    try:
        load_model_weights(plain_again, tied)
        facts["missing_weight_error"] = None
    except CheckpointError as exc:
        facts["missing_weight_error"] = str(exc)
    print(json.dumps(facts), flush=True)
    destroy_parallel()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

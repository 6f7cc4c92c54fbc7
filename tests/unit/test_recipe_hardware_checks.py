"""Checks that depend on the machine: FP8 recipes per GPU generation, gradient-accumulation fusion
when its kernels exist, and a Transformer Engine that is installed but fails to import."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from megatron_cpt.config.model import Fp8Config, ModelConfig
from megatron_cpt.config.parallel import ParallelConfig
from megatron_cpt.errors import ConfigError
from megatron_cpt.model import backend, specs

H100 = ((9, 0), "NVIDIA H100 80GB HBM3")


def test_mxfp8_is_refused_on_hopper():
    with pytest.raises(ConfigError) as info:
        specs.check_fp8_recipe_on_device("mxfp8", *H100)
    message = str(info.value)
    assert message.startswith("model.fp8.recipe=mxfp8") and "sm_90" in message and "H100" in message


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise", "blockwise"])
def test_hopper_recipes_pass(recipe):
    specs.check_fp8_recipe_on_device(recipe, *H100)


def test_mxfp8_passes_on_blackwell_and_fp8_is_refused_on_ampere():
    specs.check_fp8_recipe_on_device("mxfp8", (10, 0), "NVIDIA B200")
    with pytest.raises(ConfigError, match="model.fp8: FP8 needs compute capability 8.9"):
        specs.check_fp8_recipe_on_device("delayed", (8, 0), "NVIDIA A100-SXM4-80GB")


def _fake_kernels(monkeypatch, cuda: bool, apex_kernel: bool) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        if name == "fused_weight_gradient_mlp_cuda":
            return importlib.machinery.ModuleSpec(name, None) if apex_kernel else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(specs.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(specs.importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("cuda,apex_kernel,expected", [(True, True, True), (True, False, False),
                                                       (False, True, False)])
def test_gradient_accumulation_fusion_follows_its_kernels(monkeypatch, cuda, apex_kernel, expected):
    from megatron_cpt.model.build import build_transformer_config

    _fake_kernels(monkeypatch, cuda, apex_kernel)
    assert specs.gradient_accumulation_fusion_available() is expected
    model = ModelConfig(dtype="fp32", attention_backend="sdpa")
    config = build_transformer_config(model, ParallelConfig(), "sdpa", on_cpu=not cuda)
    assert config.gradient_accumulation_fusion is expected


@pytest.fixture
def broken_transformer_engine(tmp_path, monkeypatch):
    """An installed transformer_engine whose PyTorch extension fails to load."""
    package = tmp_path / "transformer_engine"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "pytorch.py").write_text(
        "raise OSError('libcudnn.so.9: cannot open shared object file: No such file or directory')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [n for n in sys.modules if n.startswith("transformer_engine")]:
        del sys.modules[name]


def test_broken_transformer_engine_is_reported_not_replaced_by_sdpa(broken_transformer_engine):
    with pytest.raises(ConfigError) as info:
        backend.resolve_attention_backend("auto")
    message = str(info.value)
    assert message.startswith("model.attention_backend") and "libcudnn.so.9" in message
    assert "\n" not in message
    # Asking for SDPA explicitly needs no Transformer Engine at all.
    assert backend.resolve_attention_backend("sdpa") == "sdpa"


def test_absent_transformer_engine_means_sdpa():
    if importlib.util.find_spec("transformer_engine") is not None:
        pytest.skip("Transformer Engine is installed here")
    assert backend.resolve_attention_backend("auto") == "sdpa"
    with pytest.raises(ConfigError, match="model.attention_backend=te"):
        backend.resolve_attention_backend("te")


def test_fp8_without_transformer_engine_is_a_config_error():
    if importlib.util.find_spec("transformer_engine") is not None:
        pytest.skip("Transformer Engine is installed here")
    from megatron_cpt.model.build import build_transformer_config

    model = ModelConfig(dtype="bf16", fp8=Fp8Config())
    with pytest.raises(ConfigError, match="model.fp8"):
        build_transformer_config(model, ParallelConfig(),
                                 backend.resolve_attention_backend(model.attention_backend),
                                 on_cpu=True)


@pytest.mark.parametrize("on_cpu", [False, True])
def test_interleaved_pipeline_p2p_is_unbatched_and_overlapped_on_every_device(on_cpu):
    """With PP=2 and virtual stages, each rank's sends of an interleaved step go to its one peer;
    megatron-core keeps activations and gradients apart only with unbatched p2p (Megatron-LM's
    setting for interleaving: overlap on, batching off)."""
    from megatron_cpt.model.build import build_transformer_config

    model = ModelConfig(num_layers=4, dtype="fp32")
    interleaved = build_transformer_config(model, ParallelConfig(pp=2, vpp=2), "sdpa", on_cpu=on_cpu)
    assert (interleaved.batch_p2p_comm, interleaved.overlap_p2p_comm) == (False, True)
    plain = build_transformer_config(model, ParallelConfig(pp=2), "sdpa", on_cpu=on_cpu)
    # 1F1B without interleaving: batched on GPUs, as Megatron-LM; one order for all on gloo.
    assert (plain.batch_p2p_comm, plain.overlap_p2p_comm) == (not on_cpu, False)


@pytest.fixture
def installed_transformer_engine(monkeypatch):
    """Make the stand-in Transformer Engine of tests/stubs importable, at a given version."""
    import megatron.core.utils

    def install(version: str) -> None:
        monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "stubs"))
        import transformer_engine

        monkeypatch.setattr(transformer_engine, "__version__", version)
        monkeypatch.setattr(megatron.core.utils, "_te_version", None)  # megatron-core's cache

    yield install
    for name in [n for n in sys.modules if n.startswith("transformer_engine")]:
        del sys.modules[name]


@pytest.mark.parametrize("recipe,refused", [("tensorwise", True), ("blockwise", True),
                                            ("mxfp8", False), ("delayed", False)])
def test_fp8_recipe_the_installed_te_lacks_is_refused_before_the_model_is_built(
        installed_transformer_engine, recipe, refused):
    from megatron_cpt.model.build import build_transformer_config

    installed_transformer_engine("2.1.0")
    model = ModelConfig(dtype="bf16", attention_backend="te", fp8=Fp8Config(recipe=recipe))
    if refused:
        with pytest.raises(ConfigError, match=rf"^model.fp8.recipe={recipe}: needs Transformer "
                                              rf"Engine >= 2\.[23]\.0\.dev0, installed here is 2\.1\.0"):
            build_transformer_config(model, ParallelConfig(), "te", on_cpu=True)
    else:
        assert build_transformer_config(model, ParallelConfig(), "te", on_cpu=True).fp8_recipe == recipe


def _gpu_config_with_te(monkeypatch, backend="te", **loss):
    from megatron.core.models.common.embeddings import rope_utils

    from megatron_cpt.model.build import build_transformer_config

    # TE's fused RoPE, which megatron-core looked up before the stand-in was importable.
    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb", lambda *args: None)
    return build_transformer_config(ModelConfig(dtype="bf16"), ParallelConfig(), backend,
                                    on_cpu=False, **loss)


def test_cross_entropy_fusion_with_transformer_engine_on_gpus(installed_transformer_engine,
                                                            monkeypatch):
    from megatron_cpt.model.build import build_transformer_config

    installed_transformer_engine("2.7.0")  # the Dockerfile image's
    for backend, fused in (("te", True), ("sdpa", False)):
        config = _gpu_config_with_te(monkeypatch, backend, loss_mask_varies=False)
        assert (config.cross_entropy_loss_fusion, config.cross_entropy_fusion_impl) == (fused, "te")
    assert not build_transformer_config(ModelConfig(), ParallelConfig(), "te", on_cpu=True,
                                        loss_mask_varies=False).cross_entropy_loss_fusion


# (TE version, loss mask varies, micro-batch size) -> fused. TE < 2.8 scales every token's gradient
# by the first token's loss-mask value; 2.8-2.10 read the [s, b] gradient as contiguous, which
# megatron-core's transposed view is only at b = 1; 2.11 made it contiguous.
FUSION_RULE = [
    ("2.7.0", False, 4, True), ("2.7.0", True, 1, False), ("2.7.0+a8f6b5d", True, 1, False),
    ("2.8.0", True, 1, True), ("2.8.0", True, 2, False), ("2.10.0", True, 2, False),
    ("2.10.0", False, 2, True), ("2.11.0", True, 2, True), ("2.11.0.dev0+1f2e", True, 4, True),
    ("2.12.1", True, 8, True),
]


@pytest.mark.parametrize("version,varies,micro_batch,fused", FUSION_RULE)
def test_fused_cross_entropy_only_where_the_installed_te_gets_this_loss_right(
        installed_transformer_engine, monkeypatch, version, varies, micro_batch, fused):
    installed_transformer_engine(version)
    assert backend.te_cross_entropy_is_exact(version, varies, micro_batch) is fused
    config = _gpu_config_with_te(monkeypatch, loss_mask_varies=varies,
                                 micro_batch_size=micro_batch)
    assert config.cross_entropy_loss_fusion is fused


def test_the_defaults_assume_a_loss_mask_that_varies(installed_transformer_engine, monkeypatch):
    installed_transformer_engine("2.7.0")
    assert not _gpu_config_with_te(monkeypatch).cross_entropy_loss_fusion


@pytest.mark.parametrize("recipe,varies", [("llama3_8b_sft_8xh100_fp8.yaml", True),
                                            ("llama3_70b_sft_64xh100_fp8.yaml", True),
                                            ("llama3_8b_cpt_8xh100_fp8.yaml", False),
                                            ("llama3_70b_cpt_64xh100_fp8.yaml", False)])
def test_sft_recipes_have_a_varying_loss_mask_and_cpt_recipes_do_not(recipe, varies):
    from megatron_cpt.config.recipe import load_recipe

    examples = Path(__file__).resolve().parents[2] / "examples"
    assert load_recipe(examples / recipe).data.loss_mask_varies is varies

"""Build Llama-3 as megatron-core ``GPTModel`` chunks for this rank's pipeline stage(s).

Call after ``megatron_cpt.runtime.parallel.initialize_parallel`` (the process groups must exist).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_cpt.config.model import ModelConfig, padded_vocab_size
from megatron_cpt.config.parallel import ParallelConfig
from megatron_cpt.errors import ConfigError
from megatron_cpt.model.backend import (check_fp8_recipe_for_te, installed_te_version,
                                        resolve_attention_backend, te_cross_entropy_is_exact)
from megatron_cpt.model.specs import (build_decoder_spec, check_fp8_recipe_on_device,
                                      gradient_accumulation_fusion_available)
from megatron_cpt.model.vocab_padding import mask_padded_logits

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_transformer_config(model: ModelConfig, parallel: ParallelConfig, backend: str, *,
                             on_cpu: bool, initialize: bool = True, loss_mask_varies: bool = True,
                             micro_batch_size: int = 1) -> TransformerConfig:
    """``backend`` is the resolved attention backend (``te``, ``sdpa`` or ``local``).

    ``loss_mask_varies`` (fine-tuning data: only answers are trained) and ``micro_batch_size``
    decide whether Transformer Engine's fused cross entropy computes this loss's gradients
    correctly (``te_cross_entropy_is_exact``); CPT's loss mask is all ones.
    """
    if model.fp8 is not None:
        if backend != "te":
            raise ConfigError("model.fp8: FP8 needs Transformer Engine, which is not installed here")
        check_fp8_recipe_for_te(model.fp8.recipe)
        if not on_cpu:
            check_fp8_recipe_on_device(model.fp8.recipe, torch.cuda.get_device_capability(),
                                       torch.cuda.get_device_name())
    dtype = _DTYPES[model.dtype]
    fused = not on_cpu
    kwargs = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model.init_method_std,
        params_dtype=dtype,
        bf16=model.dtype == "bf16",
        fp16=model.dtype == "fp16",
        pipeline_dtype=dtype,
        autocast_dtype=dtype,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp,
        context_parallel_size=parallel.cp,
        sequence_parallel=parallel.sequence_parallel_enabled,
        num_layers_in_first_pipeline_stage=parallel.first_stage_layers,
        num_layers_in_last_pipeline_stage=parallel.last_stage_layers,
        use_cpu_initialization=on_cpu,
        perform_initialization=initialize,
        calculate_per_token_loss=True,
        bias_activation_fusion=fused and backend == "te",
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        bias_dropout_fusion=fused and backend == "te",
        apply_rope_fusion=fused and backend == "te",
        gradient_accumulation_fusion=gradient_accumulation_fusion_available(),
        # The loss from Transformer Engine's fused kernel over the TP-split logits, without
        # megatron-core's fp32 copy of them (4.2 GB per micro-batch of 8192 tokens for Llama-3's
        # vocabulary), as Megatron-Bridge's recipes run it; its native variant needs torch.compile.
        cross_entropy_loss_fusion=fused and backend == "te" and te_cross_entropy_is_exact(
            installed_te_version(), loss_mask_varies, micro_batch_size),
        cross_entropy_fusion_impl="te",
        # megatron-core frees a stage's output right after posting its send. NCCL keeps the
        # memory until the send has run (p2p ops record their CUDA stream); gloo sends from a
        # background thread, which under the overlapped p2p of interleaving would read freed memory.
        deallocate_pipeline_outputs=not on_cpu,
        # Pipeline p2p as Megatron-LM sets it. Interleaving (vpp) overlaps its sends and receives
        # with compute, one op at a time: megatron-core's unbatched p2p posts them in an order set
        # by rank parity and, in a pipeline group of two, sends one direction over the world group.
        # Batched, at PP=2 each rank's two sends of an interleaved step go to the same peer with
        # activations and gradients of the same shape, which megatron-core only keeps apart
        # unbatched (Megatron-LM refuses interleaving at PP=2 without the overlap). On the CPU
        # every layout is unbatched: gloo matches messages between two ranks in posting order.
        overlap_p2p_comm=parallel.vpp is not None,
        batch_p2p_comm=parallel.vpp is None and not on_cpu,
    )
    if model.recompute != "none":
        kwargs.update(recompute_granularity=model.recompute)
        if model.recompute == "full":
            kwargs.update(recompute_method="uniform", recompute_num_layers=1)
    if model.fp8 is not None:
        kwargs.update(fp8=model.fp8.format, fp8_recipe=model.fp8.recipe, fp8_margin=model.fp8.margin,
                      fp8_amax_history_len=model.fp8.amax_history_len,
                      fp8_amax_compute_algo=model.fp8.amax_compute_algo,
                      fp8_param=model.fp8.param_gather)
    return TransformerConfig(**kwargs)


def build_model(model: ModelConfig, parallel: ParallelConfig, *, initialize: bool = True,
                loss_mask_varies: bool = True, micro_batch_size: int = 1) -> list[GPTModel]:
    """One GPTModel per virtual pipeline stage held by this rank (a list of one without vpp).

    Training passes its loss mask's kind and micro-batch size (``build_transformer_config``); the
    defaults assume a mask that varies per token, which is safe for any loss.
    """
    on_cpu = not torch.cuda.is_available()
    backend = resolve_attention_backend(model.attention_backend)
    config = build_transformer_config(model, parallel, backend, on_cpu=on_cpu, initialize=initialize,
                                      loss_mask_varies=loss_mask_varies,
                                      micro_batch_size=micro_batch_size)
    vocab = padded_vocab_size(model.vocab_size, model.make_vocab_size_divisible_by, parallel.tp)
    chunks = []
    for vp_stage in range(parallel.vpp or 1):
        stage = vp_stage if parallel.vpp else None
        chunk = GPTModel(
            config=config,
            transformer_layer_spec=build_decoder_spec(backend, config, stage),
            vocab_size=vocab,
            max_sequence_length=model.max_position_embeddings,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            share_embeddings_and_output_weights=model.tie_embeddings,
            position_embedding_type="rope",
            rotary_base=int(model.rope_theta),
            rope_scaling=model.rope_scaling is not None,
            rope_scaling_factor=model.rope_scaling.factor if model.rope_scaling else 8.0,
            vp_stage=stage,
        )
        mask_padded_logits(chunk, model.vocab_size, vocab)
        if not on_cpu:
            chunk.cuda(torch.cuda.current_device())
        chunks.append(chunk)
    return chunks


def describe_layout(chunks) -> dict:
    """The layout this rank's model runs with, read from the built modules and process groups."""
    modules = [getattr(c, "module", c) for c in chunks]
    config = modules[0].config
    layer = next((m.decoder.layers[0] for m in modules if len(m.decoder.layers)), None)
    norm_weights = [p for m in modules for name, p in m.named_parameters() if "norm" in name]
    final_norm = next((m.decoder.final_layernorm for m in modules
                       if getattr(m.decoder, "final_layernorm", None) is not None), None)
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "vpp": parallel_state.get_virtual_pipeline_model_parallel_world_size(),
        "cp": parallel_state.get_context_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
        "sequence_parallel": config.sequence_parallel,
        # Pipeline sends and receives: batched (1F1B on GPUs) or one by one, overlapped with
        # compute under interleaving.
        "pipeline_p2p": ("overlapped" if config.overlap_p2p_comm else
                         "batched" if config.batch_p2p_comm else "unbatched"),
        # True when every norm weight is all-reduced over TP by finalize_model_grads (needed by SP).
        "norm_grads_reduced_over_tp": bool(norm_weights) and all(
            getattr(p, "sequence_parallel", False) for p in norm_weights),
        "core_attention": type(layer.self_attention.core_attention).__name__ if layer else None,
        # Transformer Engine's fused kernel, or megatron-core's vocab-parallel cross entropy.
        "cross_entropy": ("te_fused" if config.cross_entropy_loss_fusion else
                          "vocab_parallel"),
        "final_norm": type(final_norm).__name__ if final_norm is not None else None,
    }

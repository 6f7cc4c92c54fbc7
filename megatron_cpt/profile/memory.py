"""GPU memory of a recipe's layout, estimated before launching, per pipeline stage.

    megatron-cpt profile estimate examples/llama3_8b_cpt_8xh100_fp8.yaml parallel.tp=1

``estimate_memory(recipe)`` returns a frozen ``MemoryEstimate``: bytes per GPU of each pipeline
stage (weights, FP8 weight copies, gradients, optimizer state, activations, logits), the
communication volume per step by kind, whether the most-loaded stage fits, and the assumptions
it rests on. ``format_estimate`` renders it as text.

Parameters, gradients and optimizer state are counted exactly (``tests/distributed`` checks them
against the tensors of a CPU run). Activations follow Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models"), adapted to RMSNorm, grouped-query attention, SwiGLU,
flash/SDPA attention (no ``s x s`` matrix kept) and no dropout. Per token and layer, the tensors
kept for the backward pass are (``hs`` = h / TP with sequence parallelism, else h):

| tensor | elements | recompute=selective | recompute=full |
|---|---|---|---|
| inputs of the two RMSNorms | 2 hs | kept | only the layer input (hs) |
| inputs of QKV and fc1 (norm outputs) | 2 hs | kept | - |
| Q, K, V after RoPE | (q + 2k) / TP | kept | - |
| attention output and softmax statistics | q / TP (+ fp32 a / TP) | recomputed | - |
| input of the output projection | q / TP | kept | - |
| fc1 output (SwiGLU input) | 2 f / TP | kept | - |
| fc2 input (SwiGLU output) | f / TP | kept | - |

With FP8, Transformer Engine keeps the four linear-layer inputs in FP8 (1 byte). The pipeline
schedule keeps ``min(p - stage, m)`` micro-batches in flight with 1F1B; with ``v`` virtual stages,
``min(2 (p - stage - 1) + (v - 1) p + 1, m v)`` chunk-micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_cpt.config.model import ModelConfig, padded_vocab_size
from megatron_cpt.config.parallel import ParallelConfig
from megatron_cpt.config.recipe import Recipe

GB = 1e9
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
GRAD_BYTES = 4  # megatron-core DDP with grad_reduce_in_fp32 (runtime/parallel.py)
FP8_WEIGHT_COPY_BYTES = 2  # Transformer Engine's FP8 weight and its transpose, per GEMM weight
DEFAULT_HEADROOM = 0.10


@dataclass(frozen=True)
class StageParameters:
    """Parameter elements held by one GPU of a pipeline stage (its TP shard)."""

    layers: int  # transformer layers, all virtual stages of this rank
    gemm: int  # transformer-layer linear weights (the ones FP8 computes with)
    norms: int  # RMSNorm weights
    embeddings: int  # word embeddings (first stage) and output layer (last stage)

    @property
    def total(self) -> int:
        return self.gemm + self.norms + self.embeddings


@dataclass(frozen=True)
class StageMemory:
    """Bytes on one GPU of pipeline stage ``stage``."""

    stage: int
    parameters: StageParameters
    weights: float
    fp8_weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    in_flight_microbatches: float  # layer-weighted micro-batches whose activations are kept

    @property
    def total(self) -> float:
        return (self.weights + self.fp8_weights + self.gradients + self.optimizer
                + self.activations + self.logits)


@dataclass(frozen=True)
class CommunicationVolume:
    """Bytes each GPU sends per optimizer step (ring algorithms), by parallelism."""

    tp: float
    pp: float
    dp: float


@dataclass(frozen=True)
class MemoryEstimate:
    layout: str
    stages: tuple[StageMemory, ...]
    communication: CommunicationVolume
    gpu_memory_gb: float
    headroom_fraction: float  # kept free for the CUDA context, NCCL, fragmentation, temporaries
    assumptions: tuple[str, ...]

    @property
    def most_loaded(self) -> StageMemory:
        return max(self.stages, key=lambda stage: stage.total)

    @property
    def usable_bytes(self) -> float:
        return self.gpu_memory_gb * GB * (1.0 - self.headroom_fraction)

    @property
    def fits(self) -> bool:
        return self.most_loaded.total <= self.usable_bytes


def transformer_engine_layers(model: ModelConfig) -> bool:
    """Whether the layers are Transformer Engine's: assumed for ``auto`` (GPU clusters have it)."""
    return model.attention_backend in ("auto", "te")


def stage_parameters(model: ModelConfig, parallel: ParallelConfig) -> list[StageParameters]:
    """Parameters per GPU of each pipeline stage (all TP ranks of a stage hold the same count)."""
    h, tp, pp = model.hidden_size, parallel.tp, parallel.pp
    q = model.kv_channels * model.num_attention_heads
    kv = model.kv_channels * model.num_query_groups
    gemm_per_layer = (h * (q + 2 * kv) + q * h + 3 * h * model.ffn_hidden_size) // tp
    norms_per_layer = 2 * h
    vocab_rows = padded_vocab_size(model.vocab_size, model.make_vocab_size_divisible_by, tp) // tp
    chunks = parallel.stage_layer_counts(model.num_layers)  # per virtual stage, in model order
    stages = []
    for rank in range(pp):
        layers = sum(chunks[rank::pp])
        norms = layers * norms_per_layer + (h if rank == pp - 1 else 0)  # + final norm
        embeddings = vocab_rows * h if rank == 0 else 0
        if rank == pp - 1 and (not model.tie_embeddings or pp > 1):
            embeddings += vocab_rows * h  # output layer (a copy of the embeddings when tied)
        stages.append(StageParameters(layers, layers * gemm_per_layer, norms, embeddings))
    return stages


def _activation_bytes_per_token(model: ModelConfig, tp: int, sp: bool) -> tuple[float, float]:
    """(kept per layer, kept at the layer boundary only) in bytes per token of one micro-batch."""
    e = DTYPE_BYTES[model.dtype]
    linear_in = 1 if model.fp8 is not None else e
    h = model.hidden_size
    hs = h / tp if sp else h
    q = model.kv_channels * model.num_attention_heads / tp
    kv = model.kv_channels * model.num_query_groups / tp
    f = model.ffn_hidden_size / tp
    attention_out = q * e + 4 * model.num_attention_heads / tp  # output + fp32 log-sum-exp
    layer = (2 * hs * e + 2 * hs * linear_in + (q + 2 * kv) * e + attention_out
             + q * linear_in + 2 * f * e + f * linear_in)
    if model.recompute == "selective":
        layer -= attention_out
    return layer, hs * e


def _in_flight(parallel: ParallelConfig, rank: int, chunk_layers: list[int], microbatches: int
               ) -> float:
    """Layer-micro-batches of activations stage ``rank`` holds at its peak (1F1B schedules)."""
    p, v = parallel.pp, parallel.vpp
    own = chunk_layers[rank::p]
    if p == 1:
        return float(sum(own))
    if v is None:
        return float(sum(own) * min(p - rank, microbatches))
    chunk_microbatches = min(2 * (p - rank - 1) + (v - 1) * p + 1, microbatches * v)
    return float(own[0] * chunk_microbatches)  # vpp requires an even split


def _logits_bytes(model: ModelConfig, tp: int, sp: bool, tokens: float) -> float:
    """Last stage, one micro-batch: output-layer input, logits and the fp32 softmax of the loss."""
    e = DTYPE_BYTES[model.dtype]
    vocab = padded_vocab_size(model.vocab_size, model.make_vocab_size_divisible_by, tp)
    rows = vocab / tp
    per_token = 2 * (model.hidden_size / tp if sp else model.hidden_size) * e
    per_token += rows * (e + 4 if e != 4 else 4)  # logits, then megatron-core's fp32 copy
    if vocab != model.vocab_size:
        per_token += rows * e  # the masked copy of the padded columns (model/vocab_padding.py)
    return per_token * tokens


def _weight_bytes(model: ModelConfig, params: StageParameters) -> float:
    """Norm weights are in the model dtype too, in every spec (TE's norms and
    ``SequenceParallelRMSNorm``); FP8 parameters exist only as their FP8 copies (``fp8_weights``)."""
    e = DTYPE_BYTES[model.dtype]
    gemm = 0 if model.fp8 is not None and model.fp8.param_gather else params.gemm * e
    return gemm + (params.embeddings + params.norms) * e


def _optimizer_bytes(recipe: Recipe, params: StageParameters) -> float:
    """fp32 master copies of the weights that are not fp32 already, and the moments."""
    moments = 8 if recipe.optim.optimizer == "adam" else 4  # Adam m and v; SGD momentum
    master = 0 if recipe.model.dtype == "fp32" else 4 * params.total
    return master + moments * params.total


def _communication(recipe: Recipe, stage: StageMemory, sp: bool, microbatches: int
                   ) -> CommunicationVolume:
    model, parallel, train = recipe.model, recipe.parallel, recipe.train
    e = DTYPE_BYTES[model.dtype]
    tokens = train.micro_batch_size * train.seq_length / parallel.cp
    hidden = tokens * model.hidden_size * e  # one [s, b, h] activation
    tp = parallel.tp
    # Per layer and micro-batch: two all-reduces forward, two backward (or the equivalent
    # all-gather + reduce-scatter pairs with sequence parallelism), two more with full recompute.
    collectives = stage.parameters.layers * (6 if model.recompute == "full" else 4) + 1
    tp_bytes = collectives * microbatches * 2 * (tp - 1) / tp * hidden if tp > 1 else 0.0
    pp_bytes = 0.0
    if parallel.pp > 1:
        pp_bytes = 2 * microbatches * (parallel.vpp or 1) * (hidden / tp if sp else hidden)
    shards = recipe.data_parallel_size * parallel.cp
    params = stage.parameters.total
    dp_bytes = 0.0
    if shards > 1:
        ring = (shards - 1) / shards
        if parallel.distributed_optimizer:  # reduce-scatter fp32 grads, all-gather weights
            dp_bytes = ring * params * (GRAD_BYTES + e)
        else:  # all-reduce fp32 grads
            dp_bytes = 2 * ring * params * GRAD_BYTES
    return CommunicationVolume(tp_bytes, pp_bytes, dp_bytes)


def estimate_memory(recipe: Recipe, gpu_memory_gb: float = 80.0,
                    headroom_fraction: float = DEFAULT_HEADROOM) -> MemoryEstimate:
    """Memory per GPU of every pipeline stage of ``recipe``'s layout, and whether it fits."""
    model, parallel, train = recipe.model, recipe.parallel, recipe.train
    sp = parallel.sequence_parallel_enabled
    dp = recipe.data_parallel_size
    microbatches = train.num_microbatches(dp)
    shards = dp * parallel.cp if parallel.distributed_optimizer else 1
    fp8 = model.fp8 is not None
    tokens = train.micro_batch_size * train.seq_length / parallel.cp
    per_layer, boundary = _activation_bytes_per_token(model, parallel.tp, sp)
    chunk_layers = parallel.stage_layer_counts(model.num_layers)
    full_recompute = model.recompute == "full"
    stages = []
    for rank, params in enumerate(stage_parameters(model, parallel)):
        in_flight = _in_flight(parallel, rank, chunk_layers, microbatches)
        if full_recompute:  # layer inputs of every micro-batch, one layer recomputed at a time
            activations = tokens * (boundary * in_flight + per_layer)
        else:
            activations = tokens * per_layer * in_flight
        stages.append(StageMemory(
            stage=rank, parameters=params, weights=_weight_bytes(model, params),
            fp8_weights=params.gemm * FP8_WEIGHT_COPY_BYTES if fp8 else 0.0,
            gradients=params.total * GRAD_BYTES,
            optimizer=_optimizer_bytes(recipe, params) / shards,
            activations=activations,
            logits=_logits_bytes(model, parallel.tp, sp, tokens) if rank == parallel.pp - 1 else 0.0,
            in_flight_microbatches=in_flight / max(params.layers, 1)))
    busiest = max(stages, key=lambda s: s.total)
    layout = (f"TP{parallel.tp} x PP{parallel.pp}" + (f" (VPP{parallel.vpp})" if parallel.vpp else "")
              + f" x CP{parallel.cp} x DP{dp} = {recipe.launch.world_size} GPUs"
              + f", {microbatches} micro-batches of {train.micro_batch_size} x {train.seq_length} tokens")
    return MemoryEstimate(
        layout=layout, stages=tuple(stages),
        communication=_communication(recipe, busiest, sp, microbatches),
        gpu_memory_gb=gpu_memory_gb, headroom_fraction=headroom_fraction,
        assumptions=_assumptions(recipe, sp, shards, headroom_fraction))


def _assumptions(recipe: Recipe, sp: bool, shards: int, headroom: float) -> tuple[str, ...]:
    model, parallel = recipe.model, recipe.parallel
    layers = ("Transformer Engine layers" if transformer_engine_layers(model)
              else "megatron-core local layers")
    notes = [
        f"weights in {model.dtype} ({layers}); gradients in the fp32 DDP buffer (4 bytes each)",
        f"optimizer: fp32 master weights and {recipe.optim.optimizer} state, "
        + (f"sharded over {shards} data-parallel ranks (distributed optimizer)"
           if parallel.distributed_optimizer else "on every rank"),
        f"sequence parallelism {'on' if sp else 'off'}; activation recompute: {model.recompute}",
        "flash/SDPA attention (no s x s matrix kept), no dropout",
        "logits: one micro-batch on the last stage (its loss runs backward before the next forward)",
        f"not counted, covered by the {_headroom_text(headroom)}: CUDA context, NCCL buffers, "
        "allocator fragmentation, optimizer-step and gradient-clipping temporaries, buffer padding",
    ]
    if model.fp8 is not None:
        notes.append("FP8: linear inputs kept in FP8; Transformer Engine's FP8 copy and transpose "
                     "of every GEMM weight (2 bytes each)"
                     + ("; weights stored in FP8 (param_gather)" if model.fp8.param_gather else ""))
    if parallel.cp > 1:
        notes.append("context parallelism: activations divided by CP; its KV exchange is not counted")
    return tuple(notes)


def _headroom_text(fraction: float) -> str:
    return f"{fraction:.0%} headroom"


def format_estimate(estimate: MemoryEstimate) -> str:
    """The estimate as a table of GB per GPU and stage, the verdict, the volume and assumptions."""
    rows = [("parameters (M)", lambda s: s.parameters.total / 1e6),
            ("weights", lambda s: s.weights / GB), ("FP8 weight copies", lambda s: s.fp8_weights / GB),
            ("gradients", lambda s: s.gradients / GB), ("optimizer", lambda s: s.optimizer / GB),
            ("activations", lambda s: s.activations / GB), ("logits", lambda s: s.logits / GB),
            ("total", lambda s: s.total / GB)]
    header = f"{'GB per GPU':<20}" + "".join(f"{f'stage {s.stage}':>11}" for s in estimate.stages)
    lines = [estimate.layout, header]
    for label, value in rows:
        lines.append(f"{label:<20}" + "".join(f"{value(s):>11.2f}" for s in estimate.stages))
    busiest = estimate.most_loaded
    verdict = "fits" if estimate.fits else "DOES NOT FIT"
    lines.append(
        f"most loaded: stage {busiest.stage}, {busiest.total / GB:.1f} GB of "
        f"{estimate.usable_bytes / GB:.1f} GB usable ({estimate.gpu_memory_gb:g} GB GPU, "
        f"{_headroom_text(estimate.headroom_fraction)}): {verdict}")
    c = estimate.communication
    lines.append(f"sent per GPU per step: TP {c.tp / GB:.2f} GB, PP {c.pp / GB:.2f} GB, "
                 f"DP {c.dp / GB:.2f} GB")
    lines.append("assumptions:")
    lines.extend(f"  - {note}" for note in estimate.assumptions)
    return "\n".join(lines)

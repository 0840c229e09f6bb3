"""Packing a model, a GPU and an engine into the flat float64 vectors the kernels take.

Numba kernels take only arrays and scalars, so a ``ModelSpec`` becomes ``model_vector`` and a
GPU + precision + engine becomes ``hardware_vector``; the integer constants below name the slots.

Typed wrappers do not pass those around one by one: ``PerfContext`` holds everything fixed for
a search (model, GPU, engine, precision, their vectors and the calibration) and hands the
kernels their leading arrays as ``ctx.kernel_args`` (``mv, hv, cg, cp, cd``); ``Layouts`` holds
the per-candidate layout arrays (``tp, pp, ep, dp``) that follow them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from pdplanner.planner.catalog import (
    BYTES_PER_ELEMENT,
    EngineSpec,
    GpuSpec,
    ModelSpec,
    fp8_block_experts,
)
from pdplanner.planner.perf.calibration import Calibration, engine_calibration, load_calibration
from pdplanner.planner.perf.opkernels import D_N_SM

# model_vector slots
M_LAYERS, M_HIDDEN, M_HEADS, M_KV_HEADS, M_HEAD_DIM, M_FFN, M_VOCAB = 0, 1, 2, 3, 4, 5, 6
M_EXPERTS, M_TOPK, M_MOE_FFN, M_SHARED, M_DENSE_LAYERS = 7, 8, 9, 10, 11
M_MLA, M_Q_LORA, M_KV_LORA, M_NOPE, M_ROPE, M_V_HEAD, M_TIED = 12, 13, 14, 15, 16, 17, 18
M_WINDOW, M_WINDOW_LAYERS, M_LINEAR_LAYERS, M_LINEAR_STATE, M_LINEAR_PARAMS = 19, 20, 21, 22, 23
M_INDEX_TOPK, M_INDEX_DIM, M_INDEX_PARAMS, M_ATTN_GATE, M_SINKS = 24, 25, 26, 27, 28
M_INDEX_HEADS = 29
# Gated DeltaNet shapes: key heads, value heads, key and value head dims, convolution width
M_LIN_K_HEADS, M_LIN_V_HEADS, M_LIN_K_DIM, M_LIN_V_DIM, M_LIN_CONV = 30, 31, 32, 33, 34
MODEL_SLOTS = 35

# hardware_vector slots (one GPU type, one precision, one engine)
H_PEAK, H_PEAK_BF16, H_HBM_BW, H_LINK_BW, H_DOMAIN, H_SCALEOUT_BW = 0, 1, 2, 3, 4, 5
H_W_BYTES, H_KV_BYTES, H_HBM_BYTES, H_STEP_OVERHEAD_MS, H_DECODE_ATTN_EFF = 6, 7, 8, 9, 10
H_PREFILL_ATTN_SPEEDUP, H_CUDA_GRAPHS, H_CHUNKED_PP_PREFILL, H_N_SM = 11, 12, 13, 14
# memory: the engine's rule and fraction, its workspace, and the routed experts' storage bytes
H_MEM_RULE, H_MEM_FRACTION, H_PROFILE_TOKENS, H_SAMPLER_BYTES_PER_VOCAB = 15, 16, 17, 18
H_NON_TORCH_BYTES, H_COMM_BYTES, H_GRAPH_BYTES, H_EXPERT_W_BYTES = 19, 20, 21, 22
H_SEQ_OVERHEAD_MS = 23  # the engine's host time per scheduled sequence per step
# MoE grouped GEMM over a worst-case buffer (EngineSpec.moe_padded_*): its row alignment (0: off)
# and the TP from which the engine no longer takes that path
H_MOE_PAD_ALIGN, H_MOE_PAD_BELOW_TP = 24, 25
H_EAGER_LAYER_MS = 26  # the engine's host time per decoder layer of a step without CUDA graphs
# the largest decode batch (per rank and micro-batch) replayed as a CUDA graph; larger ones run
# eagerly (``PerfContext.with_graph_limit``; infinite until a scheduler sets it)
H_GRAPH_MAX_BS = 27
H_EP_ALLTOALL_FLOOR_MS = 28  # fixed cost of one expert-parallel dispatch or combine (ms)
# bytes per element of the tokens dispatched to the experts: fp8 where the layers compute in fp8
# or fp4 (activations quantized before the expert GEMMs), bf16 otherwise
H_DISPATCH_BYTES = 29
HARDWARE_SLOTS = 30
MEMORY_RULE_CODES = {"total": 0.0, "total_static": 1.0, "free": 2.0}

# Fixed cost (ms) of one expert-parallel all-to-all under attention DP, dispatch or combine, in
# place of the link's latency (``kernels.alltoall_ms``; the 1.5 us per doubling of the group and
# the transfer come on top): the engines' kernels (DeepEP in SGLang, TensorRT-LLM's own MoE
# all-to-all) exchange per-destination token counts, signal and wait on every peer and pack /
# unpack the tokens around the copy, which a point-to-point latency of a few microseconds does
# not cover. Fitted on the TPOT of shared/serving-runs' attention-DP
# decode pools (``tools/fit_serving.py --a2a-us 6 20 30 40 50``): 30 us on every row and in
# the leave-one-out folds that keep such rows, but 40 leaving GB300 out (README, serving model).
# For scale, DeepEP's published low-latency kernels take 77 / 114 us (dispatch / combine) at EP 8
# and 155 / 273 us at EP 32 for 128 tokens over 400 Gb/s RDMA, most of it the transfer (DeepEP
# docs/legacy.md).
EP_ALLTOALL_FLOOR_MS = 0.03

# Weight bytes per element as stored: fp4 carries one fp8 scale per 16 elements (NVFP4 / MXFP4).
WEIGHT_STORAGE_BYTES = {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5 + 1.0 / 16.0}

# Share of the calibrated fp8/fp4 GEMM throughput an engine's quantized linear layers reach in
# serving. The kernel tables time a bare ``torch._scaled_mm`` on operands already in fp8 (1,330
# TFLOP/s on an H100, 1.72x its bf16 GEMMs); in an engine each quantized linear layer also
# quantizes its activations and applies scales around the GEMM, which the tables do not see.
# Fitted on shared/serving-runs by the smallest TPOT error (``tools/fit_serving.py --quant-eff``
# over 0.55-1.0 in steps of 0.05-0.1: every row gives 0.6, 11.4% against 11.6% at 0.65; leaving
# one engine, model or system out, every fold picks 0.6 or 0.65, none above). 0.65 is kept, the
# upper end, which two signs in the data that do not rest on the fit bracket:
# * TensorRT-LLM's fp8 Qwen3-32B on H100 at TP 1-4: each added client raises TPOT by 1.2-1.4x the
#   modelled prefill interference (per request: its prompt's prefill spread over the others'
#   answers), an excess that shrinks with TP as GEMM work does; the bf16 vLLM and SGLang rows of
#   the same model and GPU are within 1.0-1.1x, so bf16 pricing stays as measured;
# * the fp8/fp4 DeepSeek-V3 disaggregated rows (TensorRT-LLM and SGLang) reach 0.5-0.7 of the
#   prefill rate the model gave their prefill pools at 8k-15k-token prompts (README,
#   disaggregated TTFT).
# It took the TPOT mean abs. error of the 768 runs from 16.3% to 14.2%. fp4 rows hardly move with
# it; the value is carried over to fp4 (the same activation quantization), not fitted there.
QUANTIZED_GEMM_EFFICIENCY = 0.65


def model_vector(m: ModelSpec) -> np.ndarray:
    v = np.zeros(MODEL_SLOTS)
    v[M_LAYERS], v[M_HIDDEN], v[M_HEADS], v[M_KV_HEADS] = (
        m.num_layers,
        m.hidden_size,
        m.num_heads,
        m.num_kv_heads,
    )
    v[M_HEAD_DIM], v[M_FFN], v[M_VOCAB] = m.head_dim, m.intermediate_size, m.vocab_size
    v[M_EXPERTS], v[M_TOPK], v[M_MOE_FFN] = (
        m.num_experts,
        m.experts_per_token,
        m.moe_intermediate_size,
    )
    v[M_SHARED], v[M_DENSE_LAYERS] = m.num_shared_experts, m.num_dense_layers
    v[M_MLA] = 1.0 if m.attention == "mla" else 0.0
    v[M_Q_LORA], v[M_KV_LORA], v[M_NOPE] = m.q_lora_rank, m.kv_lora_rank, m.qk_nope_head_dim
    v[M_ROPE], v[M_V_HEAD], v[M_TIED] = (
        m.qk_rope_head_dim,
        m.v_head_dim,
        float(m.tie_word_embeddings),
    )
    v[M_WINDOW], v[M_WINDOW_LAYERS] = m.sliding_window, m.num_window_layers
    v[M_LINEAR_LAYERS], v[M_LINEAR_STATE] = m.num_linear_layers, m.linear_state_elements
    v[M_LINEAR_PARAMS] = m.linear_layer_params
    v[M_LIN_K_HEADS], v[M_LIN_V_HEADS] = m.linear_num_key_heads, m.linear_num_value_heads
    v[M_LIN_K_DIM], v[M_LIN_V_DIM] = m.linear_key_head_dim, m.linear_value_head_dim
    v[M_LIN_CONV] = m.linear_conv_kernel_dim
    v[M_INDEX_TOPK], v[M_INDEX_DIM] = m.index_topk, m.index_head_dim
    v[M_INDEX_PARAMS], v[M_INDEX_HEADS] = m.index_params_per_layer, m.index_n_heads
    v[M_ATTN_GATE] = 1.0 if m.attn_output_gate else 0.0
    v[M_SINKS] = 1.0 if m.attention_sinks else 0.0
    return v


def hardware_vector(
    gpu: GpuSpec,
    engine: EngineSpec,
    dtype: str,
    kv_dtype: str,
    model: ModelSpec | None = None,
    memory_fraction: float | None = None,
) -> np.ndarray:
    """One GPU at one precision under one engine. With ``model``, weights are priced at the
    checkpoint's storage format where it has one (``ModelSpec.dense_weight_bytes`` /
    ``expert_weight_bytes``) and math stays at ``dtype``; ``memory_fraction`` overrides the
    engine's default fraction (vLLM gpu_memory_utilization, SGLang mem_fraction_static,
    TensorRT-LLM free_gpu_memory_fraction)."""
    v = np.zeros(HARDWARE_SLOTS)
    v[H_PEAK] = gpu.flops_per_s(dtype) * (QUANTIZED_GEMM_EFFICIENCY if dtype != "bf16" else 1.0)
    v[H_PEAK_BF16] = gpu.bf16_flops_per_s
    v[H_HBM_BW] = gpu.hbm_bytes_per_s
    v[H_LINK_BW] = gpu.nvlink_bytes_per_s
    v[H_DOMAIN] = gpu.nvlink_domain_size
    v[H_SCALEOUT_BW] = gpu.scaleout_bytes_per_s
    v[H_W_BYTES] = WEIGHT_STORAGE_BYTES[dtype]
    v[H_KV_BYTES] = BYTES_PER_ELEMENT[kv_dtype]
    v[H_HBM_BYTES] = gpu.hbm_bytes
    v[H_STEP_OVERHEAD_MS] = engine.step_overhead_ms
    v[H_SEQ_OVERHEAD_MS] = engine.seq_overhead_ms
    v[H_EAGER_LAYER_MS] = engine.eager_layer_host_ms
    v[H_GRAPH_MAX_BS] = np.inf
    v[H_EP_ALLTOALL_FLOOR_MS] = EP_ALLTOALL_FLOOR_MS
    # DeepEP's DeepSeek-V3 setting, "FP8 dispatching and BF16 combining" (its README): tokens
    # go out at the precision the layers compute in, no narrower than fp8 (fp4 sent as fp8, the
    # conservative choice), whatever the weights' storage (MXFP4 or int4 experts of a bf16
    # deployment still take bf16 tokens)
    v[H_DISPATCH_BYTES] = max(BYTES_PER_ELEMENT[dtype], BYTES_PER_ELEMENT["fp8"])
    v[H_DECODE_ATTN_EFF] = engine.decode_attention_efficiency
    v[H_PREFILL_ATTN_SPEEDUP] = engine.prefill_attention_speedup
    v[H_CUDA_GRAPHS] = 1.0 if engine.decode_cuda_graphs else 0.0
    v[H_CHUNKED_PP_PREFILL] = 1.0 if engine.chunked_pipeline_prefill else 0.0
    # SMs of the GPU whose kernel tables shape the efficiencies (the same count the fitted
    # attention kernels assume): how many thread blocks one wave of a kernel runs at once
    v[H_N_SM] = load_calibration(gpu.calibration).attn_decode[D_N_SM]
    v[H_MEM_RULE] = MEMORY_RULE_CODES[engine.memory_rule]
    # 0: the engine derives its fraction at start (memory.derived_fraction)
    fraction = engine.memory_fraction if memory_fraction is None else memory_fraction
    v[H_MEM_FRACTION] = 0.0 if fraction is None else fraction
    v[H_PROFILE_TOKENS] = engine.profile_tokens
    v[H_SAMPLER_BYTES_PER_VOCAB] = engine.sampler_seqs * engine.sampler_bytes_per_logit
    v[H_NON_TORCH_BYTES] = engine.non_torch_bytes
    v[H_COMM_BYTES] = engine.comm_buffer_bytes
    v[H_GRAPH_BYTES] = engine.cuda_graph_bytes
    if (
        dtype == "fp8"
        and model is not None
        and fp8_block_experts(model)
        and gpu.name in engine.moe_padded_gpus
    ):
        v[H_MOE_PAD_ALIGN] = engine.moe_padded_align
        v[H_MOE_PAD_BELOW_TP] = engine.moe_padded_below_tp
    v[H_EXPERT_W_BYTES] = v[H_W_BYTES]
    if model is not None:
        if model.dense_weight_bytes > 0:
            v[H_W_BYTES] = model.dense_weight_bytes
        v[H_EXPERT_W_BYTES] = model.expert_weight_bytes or v[H_W_BYTES]
    return v


class KernelArgs(NamedTuple):
    """The leading arguments of every step-model kernel, in their order."""

    mv: np.ndarray  # model_vector
    hv: np.ndarray  # hardware_vector
    cg: np.ndarray  # Calibration.gemm
    cp: np.ndarray  # Calibration.attn_prefill
    cd: np.ndarray  # Calibration.attn_decode


# KernelArgs, then one worker layout: tp, pp, ep, attention_dp
WorkerArgs = tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float, float, float
]


@dataclass(frozen=True)
class Layouts:
    """Worker layouts of ``n`` candidates as the float64 arrays the kernels take, aligned by
    index: tensor parallelism, pipeline stages, expert parallelism and attention data
    parallelism (see ``pdplanner.planner.types.Parallelism``)."""

    tp: np.ndarray
    pp: np.ndarray
    ep: np.ndarray
    dp: np.ndarray

    @classmethod
    def of(cls, layouts: Iterable[tuple[int, int, int, int]]) -> Layouts:
        """From ``(tp, pp, ep, attention_dp)`` tuples (a ``Parallelism`` unpacks to one with
        ``astuple``)."""
        a = np.array(list(layouts), dtype=np.float64).reshape(-1, 4)
        return cls(a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy(), a[:, 3].copy())

    @property
    def n(self) -> int:
        return int(self.tp.shape[0])

    def take(self, at: np.ndarray) -> Layouts:
        """The candidates at indices ``at``, in that order."""
        return Layouts(self.tp[at], self.pp[at], self.ep[at], self.dp[at])

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(tp, pp, ep, dp)``, the kernels' arguments after ``KernelArgs``."""
        return self.tp, self.pp, self.ep, self.dp

    @property
    def gpus(self) -> np.ndarray:
        """GPUs per worker: ``tp * pp * dp``."""
        gpus: np.ndarray = self.tp * self.pp * self.dp
        return gpus


@dataclass(frozen=True)
class PerfContext:
    """What stays fixed while a search varies layout and batch: model, GPU, precision, engine."""

    model: ModelSpec
    gpu: GpuSpec
    engine: EngineSpec
    dtype: str
    kv_dtype: str
    mv: np.ndarray
    hv: np.ndarray
    cal: Calibration

    @classmethod
    def build(
        cls,
        model: ModelSpec,
        gpu: GpuSpec,
        engine: EngineSpec,
        dtype: str = "bf16",
        kv_dtype: str = "bf16",
        memory_fraction: float | None = None,
    ) -> PerfContext:
        gpu.check_dtype(dtype, "precision.dtype")
        if memory_fraction is not None and not 0.0 < memory_fraction <= 1.0:
            from pdplanner.planner.errors import InvalidInputError

            raise InvalidInputError(
                "memory_fraction", f"must be in (0, 1], got {memory_fraction!r}"
            )
        if kv_dtype not in ("bf16", "fp8"):
            from pdplanner.planner.errors import InvalidInputError

            raise InvalidInputError("precision.kv_dtype", f"must be bf16 or fp8, got {kv_dtype!r}")
        from pdplanner.planner.serving.scheduler import default_graph_limit

        ctx = cls(
            model,
            gpu,
            engine,
            dtype,
            kv_dtype,
            model_vector(model),
            hardware_vector(gpu, engine, dtype, kv_dtype, model, memory_fraction),
            engine_calibration(gpu.calibration),
        )
        return ctx.with_graph_limit(default_graph_limit(engine))

    def with_graph_limit(self, max_bs: float) -> PerfContext:
        """This context with decode batches above ``max_bs`` (the scheduler's
        ``cuda_graph_max_bs``; 0: no graphs) priced as eager steps: the engine replays no CUDA
        graph for them, so the host issues every layer (``EngineSpec.eager_layer_host_ms``).
        ``build`` applies the engine's default; a caller whose scheduler overrides it applies
        the scheduler's. Returns ``self`` when nothing changes."""
        limit = float(max_bs) if self.engine.decode_cuda_graphs else 0.0
        if self.hv[H_GRAPH_MAX_BS] == limit:
            return self
        hv = self.hv.copy()
        hv[H_GRAPH_MAX_BS] = limit
        return replace(self, hv=hv)

    @property
    def kernel_args(self) -> KernelArgs:
        """``(mv, hv, cg, cp, cd)``: what every step-model kernel takes first."""
        c = self.cal
        return KernelArgs(self.mv, self.hv, c.gemm, c.attn_prefill, c.attn_decode)

    def worker_args(
        self, tp: float, pp: float, ep: float, dp: float
    ) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float, float, float
    ]:
        """``(mv, hv, cg, cp, cd, tp, pp, ep, dp)``: what a kernel pricing one worker layout
        takes first (``step_ms``, ``sweep_layout``), the layout as floats (one compiled
        specialisation whatever the caller holds)."""
        return (*self.kernel_args, float(tp), float(pp), float(ep), float(dp))

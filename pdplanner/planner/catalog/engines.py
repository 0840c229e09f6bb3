"""Serving-engine profiles (vLLM, SGLang, TensorRT-LLM): what differs between engines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pdplanner.planner.catalog._data import builtin_entries, normalise_name, optional, require
from pdplanner.planner.errors import InvalidInputError, UnknownEntryError

# How an engine sizes its KV cache (the memory rule; see EngineSpec):
#   total        fraction of the device's memory holds weights, activations, buffers and KV (vLLM)
#   total_static fraction of the device's memory holds weights and KV only; activations and
#                CUDA graphs live in the rest (SGLang's mem_fraction_static)
#   free         fraction of the memory still free after weights, activations and buffers (TRT-LLM)
MemoryRule = Literal["total", "total_static", "free"]
MEMORY_RULES: tuple[MemoryRule, ...] = ("total", "total_static", "free")


@dataclass(frozen=True)
class EngineSpec:
    """Per-engine constants of the performance model; sources are in engines.yaml."""

    name: str
    step_overhead_ms: float  # host time per iteration not hidden behind the GPU
    decode_cuda_graphs: bool  # decode steps replay CUDA graphs (no per-kernel launch cost)
    decode_attention_efficiency: float  # share of copy bandwidth reached by decode attention
    prefill_attention_speedup: float  # prefill attention speed over the calibrated FA2 kernels
    default_chunk_tokens: int  # chunked-prefill token budget per step
    max_batch: int  # most sequences one worker schedules at once
    # With pipeline parallelism, split one prompt into micro-chunks that flow through the stages
    # together (chunked pipeline prefill); off: a prompt passes every stage in turn.
    chunked_pipeline_prefill: bool = False
    # Host time per scheduled sequence per iteration not hidden behind the GPU (ms): the
    # engine's per-request work in every step (scheduling, input preparation, output handling).
    seq_overhead_ms: float = 0.0
    # Host time to issue one decoder layer's kernels in an iteration that does not replay a
    # CUDA graph (ms): such a step takes at least layers x this however fast the GPU is.
    eager_layer_host_ms: float = 0.0
    # fp8 MoE layers that run a grouped GEMM over a buffer sized for the worst case rather than
    # the routed rows: round_up(routed rows + local experts x (align - 1), align) rows at any
    # batch, on the GPUs named and below ``moe_padded_below_tp`` (vLLM's DeepGEMM path).
    # 0: the GEMM covers the routed rows only.
    moe_padded_align: int = 0
    moe_padded_below_tp: int = 0
    moe_padded_gpus: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default=(), compare=False)
    # Memory (keys of engines.yaml's memory section; sources there).
    memory_rule: MemoryRule = "total"
    # the engine's default fraction (see memory_rule); None: the engine derives it at start from
    # the GPU's memory and the worker's layout (SGLang's mem_fraction_static,
    # ``memory.derived_fraction``)
    memory_fraction: float | None = 0.9
    memory_fraction_flag: str = "gpu_memory_utilization"  # what the engine calls it
    profile_tokens: int = 8192  # tokens of the forward pass the engine reserves activations for
    sampler_seqs: int = 1024  # sequences whose logits the engine's sampler workspace holds
    sampler_bytes_per_logit: float = 38.9  # workspace bytes per logit of those sequences
    non_torch_bytes: float = 0.15e9  # CUDA/cuBLAS allocations outside the tensor allocator
    comm_buffer_bytes: float = 0.44e9  # extra when a worker spans GPUs (NCCL, custom all-reduce)
    cuda_graph_bytes: float = 0.5e9  # CUDA-graph memory pools


_ENGINES: dict[str, EngineSpec] | None = None


def _engines() -> dict[str, EngineSpec]:
    global _ENGINES
    if _ENGINES is None:
        out: dict[str, EngineSpec] = {}
        for e in builtin_entries("engines.yaml"):
            f = f"engines.yaml:{e.get('name')}"
            spec = EngineSpec(
                name=require(e, "name", str, f),
                step_overhead_ms=require(e, "step_overhead_ms", float, f),
                decode_cuda_graphs=require(e, "decode_cuda_graphs", bool, f),
                decode_attention_efficiency=require(e, "decode_attention_efficiency", float, f),
                prefill_attention_speedup=require(e, "prefill_attention_speedup", float, f),
                default_chunk_tokens=require(e, "default_chunk_tokens", int, f),
                max_batch=require(e, "max_batch", int, f),
                chunked_pipeline_prefill=optional(e, "chunked_pipeline_prefill", bool, False, f),
                seq_overhead_ms=optional(e, "seq_overhead_ms", float, 0.0, f),
                eager_layer_host_ms=optional(e, "eager_layer_host_ms", float, 0.0, f),
                **_moe_padded_keys(e.get("moe_padded_rows"), f"{f}.moe_padded_rows"),
                aliases=tuple(e.get("aliases", ())),
                **_memory_keys(e.get("memory"), f"{f}.memory"),
            )
            out[spec.name] = spec
        _ENGINES = out
    return _ENGINES


def _moe_padded_keys(section: object, f: str) -> dict[str, Any]:
    """``moe_padded_rows`` of an engine entry: ``align``, ``below_tp`` and ``gpus`` (absent:
    no padded MoE GEMM)."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise InvalidInputError(f, "must be a mapping of align, below_tp and gpus")
    align = require(section, "align", int, f)
    below_tp = require(section, "below_tp", int, f)
    gpus = section.get("gpus")
    if align < 1:
        raise InvalidInputError(f"{f}.align", "must be at least 1")
    if below_tp < 1:
        raise InvalidInputError(f"{f}.below_tp", "must be at least 1")
    if not isinstance(gpus, list) or not all(isinstance(g, str) for g in gpus):
        raise InvalidInputError(f"{f}.gpus", "must be a list of GPU names")
    return {
        "moe_padded_align": align,
        "moe_padded_below_tp": below_tp,
        "moe_padded_gpus": tuple(gpus),
    }


def _memory_keys(mem: object, f: str) -> dict[str, Any]:
    if not isinstance(mem, dict):
        raise InvalidInputError(f, "is required: the engine's memory keys")
    rule = require(mem, "rule", str, f)
    if rule not in MEMORY_RULES:
        raise InvalidInputError(f"{f}.rule", f"must be one of {', '.join(MEMORY_RULES)}")
    out: dict[str, Any] = {
        "memory_rule": rule,
        "memory_fraction": _fraction(mem, rule, f),
        "memory_fraction_flag": require(mem, "fraction_flag", str, f),
        "profile_tokens": require(mem, "profile_tokens", int, f),
        "sampler_seqs": require(mem, "sampler_seqs", int, f),
        "sampler_bytes_per_logit": require(mem, "sampler_bytes_per_logit", float, f),
        "non_torch_bytes": require(mem, "non_torch_bytes", float, f),
        "comm_buffer_bytes": require(mem, "comm_buffer_bytes", float, f),
        "cuda_graph_bytes": require(mem, "cuda_graph_bytes", float, f),
    }
    return out


def _fraction(mem: dict[str, Any], rule: str, f: str) -> float | None:
    """``memory.fraction``: a number in (0, 1], or ``auto`` where the engine derives it at start
    (only SGLang's rule, ``total_static``, has such a derivation)."""
    if mem.get("fraction") == "auto":
        if rule != "total_static":
            raise InvalidInputError(
                f"{f}.fraction", "auto (derived at start) exists only for rule total_static"
            )
        return None
    fraction = float(require(mem, "fraction", float, f))
    if not 0.0 < fraction <= 1.0:
        raise InvalidInputError(f"{f}.fraction", "must be in (0, 1] or auto")
    return fraction


def engine_names() -> list[str]:
    return sorted(_engines())


def load_engine(name: str, field_path: str = "engine") -> EngineSpec:
    key = normalise_name(name)
    for spec in _engines().values():
        if key in {normalise_name(n) for n in (spec.name, *spec.aliases)}:
            return spec
    raise UnknownEntryError(field_path, "engine", name, engine_names())

"""Serving-engine profiles (vLLM, SGLang, TensorRT-LLM): what differs between engines."""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.catalog._data import builtin_entries, normalise_name, optional, require
from planner.errors import UnknownEntryError


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
    aliases: tuple[str, ...] = field(default=(), compare=False)


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
                aliases=tuple(e.get("aliases", ())),
            )
            out[spec.name] = spec
        _ENGINES = out
    return _ENGINES


def engine_names() -> list[str]:
    return sorted(_engines())


def load_engine(name: str, field_path: str = "engine") -> EngineSpec:
    key = normalise_name(name)
    for spec in _engines().values():
        if key in {normalise_name(n) for n in (spec.name, *spec.aliases)}:
            return spec
    raise UnknownEntryError(field_path, "engine", name, engine_names())

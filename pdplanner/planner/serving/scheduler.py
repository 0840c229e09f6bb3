"""Engine scheduler settings: the defaults each engine ships with, and per-request overrides.

The defaults live in ``pdplanner/planner/catalog/data/engines.yaml`` under each engine's
``scheduler`` key, every value with the engine source it was read from. A request may override any
of them with
``engine_args`` (the engines' own flag names where they have one):

=========================  ======  ==========================================================
key                        type    meaning
=========================  ======  ==========================================================
max_num_batched_tokens     int     token budget of one iteration (vLLM; TRT-LLM max_num_tokens;
                                   SGLang chunked_prefill_size)
max_num_seqs               int     most requests running at once (TRT-LLM max_batch_size;
                                   SGLang max_running_requests)
enable_chunked_prefill     bool    split prompts over iterations to fit the token budget
mixed_batches              bool    one iteration may carry prompt chunks and decode tokens
async_scheduling           bool    the next batch is formed while the GPU runs the current one
                                   (overlap scheduler: TensorRT-LLM disable_overlap_scheduler,
                                   SGLang disable_overlap_schedule, vLLM async_scheduling), so
                                   a request that queues during an iteration waits one more
kv_admission               str     ``reserve``, ``on_demand`` or ``ratio`` (see ``_loop``)
new_token_ratio            float   ``ratio`` admission: initial share of the answer reserved
min_new_token_ratio        float   ``ratio`` admission: the floor the share decays to
new_token_ratio_decay      float   ``ratio`` admission: decay of the share per iteration
cuda_graph_max_bs          int     largest decode batch captured as a CUDA graph (0: none)
gpu_memory_utilization     float   the engine's memory fraction under its own name (vLLM;
mem_fraction_static                SGLang; TensorRT-LLM free_gpu_memory_fraction): one setting
free_gpu_memory_fraction           with the request's ``memory_fraction``, applied by
                                   ``pdplanner.planner.perf.memory`` (``memory_fraction_for``)
=========================  ======  ==========================================================

``kv_cache_dtype`` is an engine argument too, but it changes the performance context (KV bytes
per element), so ``pdplanner.planner.estimate`` applies it when it builds the context.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pdplanner.planner.catalog import EngineSpec
from pdplanner.planner.catalog._data import builtin_entries, normalise_name
from pdplanner.planner.errors import InvalidInputError

KV_ADMISSION = ("reserve", "on_demand", "ratio")
EngineArg = int | float | bool | str


@dataclass(frozen=True)
class SchedulerSettings:
    """One engine's scheduler, resolved: defaults from engines.yaml with overrides applied."""

    max_num_batched_tokens: int
    max_num_seqs: int
    enable_chunked_prefill: bool
    mixed_batches: bool
    async_scheduling: bool
    kv_admission: str
    new_token_ratio: float
    min_new_token_ratio: float
    new_token_ratio_decay: float
    cuda_graph_max_bs: int
    cuda_graph_sizes: tuple[int, ...] = ()

    def graphs_up_to(self) -> tuple[int, ...]:
        """The captured decode batch sizes, up to ``cuda_graph_max_bs``."""
        return tuple(s for s in self.cuda_graph_sizes if s <= self.cuda_graph_max_bs)


_INT = ("max_num_batched_tokens", "max_num_seqs", "cuda_graph_max_bs")
_FLOAT = ("new_token_ratio", "min_new_token_ratio", "new_token_ratio_decay")
_BOOL = ("enable_chunked_prefill", "mixed_batches", "async_scheduling")
_STR = ("kv_admission",)
# the engines' own names for the memory fraction (vLLM, SGLang, TensorRT-LLM): one setting with
# the request's ``memory_fraction``, applied to the performance context, not the scheduler
MEMORY_FRACTION_ARGS = ("gpu_memory_utilization", "mem_fraction_static", "free_gpu_memory_fraction")
_NOT_SCHEDULER = ("kv_cache_dtype", *MEMORY_FRACTION_ARGS)
ENGINE_ARG_KEYS = (*_INT, *_FLOAT, *_BOOL, *_STR, *_NOT_SCHEDULER)
MIN_BUDGET_TOKENS = 64  # the smallest token budget taken (max_num_batched_tokens, chunk_tokens)


def _graph_sizes(spec: Any, field: str) -> tuple[int, ...]:
    """A capture list: explicit sizes, or ``{start, step, stop}`` ranges joined in order."""
    sizes: list[int] = []
    if not isinstance(spec, list):
        raise InvalidInputError(field, "must be a list of sizes or {start, step, stop} ranges")
    for part in spec:
        if isinstance(part, int) and not isinstance(part, bool):
            sizes.append(part)
        elif isinstance(part, dict) and {"start", "step", "stop"} <= part.keys():
            sizes.extend(range(int(part["start"]), int(part["stop"]) + 1, int(part["step"])))
        else:
            raise InvalidInputError(field, f"bad entry {part!r}")
    return tuple(sorted(set(sizes)))


_DEFAULTS: dict[str, SchedulerSettings] | None = None


def _defaults() -> dict[str, SchedulerSettings]:
    global _DEFAULTS
    if _DEFAULTS is None:
        out: dict[str, SchedulerSettings] = {}
        for e in builtin_entries("engines.yaml"):
            name = str(e.get("name"))
            s = e.get("scheduler")
            field = f"engines.yaml:{name}.scheduler"
            if not isinstance(s, dict):
                raise InvalidInputError(field, "is required")
            values = {k: v for k, v in s.items() if k not in ("version", "cuda_graph_sizes")}
            base = _apply(None, values, field)
            out[name] = replace(
                base, cuda_graph_sizes=_graph_sizes(s.get("cuda_graph_sizes"), field)
            )
        _DEFAULTS = out
    return _DEFAULTS


def _convert_fraction(value: EngineArg, field: str) -> float:
    """A memory fraction: a number in (0, 1]."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(field, f"must be a number in (0, 1], got {value!r}") from None
    if isinstance(value, bool) or not 0.0 < f <= 1.0:
        raise InvalidInputError(field, f"must be a number in (0, 1], got {value!r}")
    return f


def _convert(key: str, value: EngineArg, field: str) -> EngineArg:
    if key in _INT:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise InvalidInputError(field, f"must be an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise InvalidInputError(field, f"must be an integer, got {value!r}")
        # a token budget needs room for a prompt chunk beside the decode batch (the smallest
        # chunk_tokens estimate takes, too)
        lo = {"cuda_graph_max_bs": 0, "max_num_batched_tokens": MIN_BUDGET_TOKENS}.get(key, 1)
        if not lo <= int(value) <= 10_000_000:
            raise InvalidInputError(field, f"must be between {lo} and 10,000,000, got {value}")
        return int(value)
    if key in _FLOAT:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise InvalidInputError(field, f"must be a number, got {value!r}") from None
        if isinstance(value, bool) or not 0.0 <= f <= 1.0:
            raise InvalidInputError(field, f"must be a number in (0, 1], got {value!r}")
        return f
    if key in _BOOL:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise InvalidInputError(field, f"must be true or false, got {value!r}")
        return value
    if key in _STR:
        if value not in KV_ADMISSION:
            raise InvalidInputError(
                field, f"must be one of {', '.join(KV_ADMISSION)}, got {value!r}"
            )
        return str(value)
    known = ", ".join(ENGINE_ARG_KEYS)
    raise InvalidInputError(field, f"unknown engine argument; known: {known}")


def _apply(
    base: SchedulerSettings | None, values: Mapping[str, EngineArg], prefix: str
) -> SchedulerSettings:
    converted = {k: _convert(k, v, f"{prefix}.{k}") for k, v in values.items()}
    if base is None:
        required = (*_INT, *_FLOAT, *_BOOL, *_STR)
        missing = [k for k in required if k not in converted]
        if missing:
            raise InvalidInputError(f"{prefix}.{missing[0]}", "is required")
        return SchedulerSettings(**converted)  # type: ignore[arg-type]
    return replace(base, **converted)  # type: ignore[arg-type]


def scheduler_for(
    engine: EngineSpec, engine_args: Mapping[str, EngineArg] | None = None
) -> SchedulerSettings:
    """``engine``'s scheduler defaults with ``engine_args`` applied; a bad key or value raises
    ``InvalidInputError`` on ``engine_args.<key>``. ``kv_cache_dtype`` is skipped here."""
    base = _defaults()[engine.name]
    args = {k: v for k, v in (engine_args or {}).items() if k not in _NOT_SCHEDULER}
    return _apply(base, args, "engine_args")


def default_graph_limit(engine: EngineSpec) -> float:
    """The largest decode batch ``engine``'s default scheduler captures as a CUDA graph
    (``cuda_graph_max_bs``); infinite for an engine without a scheduler entry in engines.yaml (a
    variant built in code). ``PerfContext.with_graph_limit`` takes it to 0 for an engine without
    decode graphs."""
    base = _defaults().get(engine.name)
    return math.inf if base is None else float(base.cuda_graph_max_bs)


def memory_fraction_for(
    engine: EngineSpec,
    engine_args: Mapping[str, EngineArg] | None,
    memory_fraction: float | None,
) -> float | None:
    """The engine's memory fraction from ``memory_fraction`` and the engine's own knob in
    ``engine_args`` (one setting); None: the engine's default. Raises ``InvalidInputError`` on
    ``engine_args.<knob>`` for another engine's knob, a value outside (0, 1], or a value that
    differs from ``memory_fraction``."""
    args = engine_args or {}
    found: float | None = None
    for key in MEMORY_FRACTION_ARGS:
        if key not in args:
            continue
        field = f"engine_args.{key}"
        if key != engine.memory_fraction_flag:
            raise InvalidInputError(
                field, f"is not an argument of {engine.name}; use {engine.memory_fraction_flag}"
            )
        found = float(_convert_fraction(args[key], field))
    if found is None:
        return memory_fraction
    if memory_fraction is not None and memory_fraction != found:
        raise InvalidInputError(
            f"engine_args.{engine.memory_fraction_flag}",
            f"is {found:g} but memory_fraction is {memory_fraction:g}; give one, or the same value",
        )
    return found


def parse_engine_arg(text: str, field: str = "engine_args") -> tuple[str, str]:
    """``key=value`` (the CLI's ``--engine-arg``) as a pair; a missing ``=`` names ``field``."""
    key, sep, value = text.partition("=")
    key = normalise_name(key).replace("-", "_")
    if not sep or not key or not value:
        raise InvalidInputError(field, f"must be key=value, got {text!r}")
    if key not in ENGINE_ARG_KEYS:
        raise InvalidInputError(
            f"{field}.{key}", f"unknown engine argument; known: {', '.join(ENGINE_ARG_KEYS)}"
        )
    return key, value

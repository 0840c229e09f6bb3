"""Turning command-line flags, JSON Lines and traffic-mix files into planner requests.

The CLI and ``pdplanner estimate --input`` share one path: flags are gathered into a mapping with
the flags' names in snake_case (``prefill_tp``), exactly the keys a JSON Lines request uses, and
:func:`estimate_request` builds the :class:`~planner.types.EstimateRequest` from it. This module
checks only the shape of the command line (which flags a phase or mode needs or accepts, value
types, file formats); range checks (a batch of zero, TP not dividing the heads) belong to the
planner's own validation, whose field paths :func:`flag_for` turns back into flag names.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, cast

from pdplanner.planner.catalog import checkpoint_dtype, default_models, is_model_path
from pdplanner.planner.errors import InvalidInputError, PlannerError
from pdplanner.planner.serving.scheduler import parse_engine_arg
from pdplanner.planner.types import (
    DEFAULT_DTYPE,
    EstimateRequest,
    Mode,
    Parallelism,
    Percentile,
    Phase,
    PlanRequest,
    PoolSpec,
    Precision,
    SearchLimits,
    Slo,
    Workload,
)
from pdplanner.planner.validate import Violations

PHASES: tuple[Phase, ...] = ("prefill", "decode")
MODES: tuple[Mode, ...] = ("agg", "disagg")
PERCENTILES: tuple[Percentile, ...] = ("p50", "p90", "p99")
PLAN_MODES: dict[str, tuple[Mode, ...]] = {
    "agg": ("agg",),
    "disagg": ("disagg",),
    "both": ("agg", "disagg"),
}

_COMMON_KEYS = (
    "model", "gpu", "isl", "osl", "dtype", "kv_dtype", "engine", "memory_fraction", "phase", "mode",
)  # fmt: skip
_PARALLEL_KEYS = ("tp", "pp", "ep", "attention_dp")
_POOL_KEYS = (*_PARALLEL_KEYS, "workers", "batch")
_PREFILL_KEYS = tuple(f"prefill_{k}" for k in _POOL_KEYS)
_DECODE_KEYS = tuple(f"decode_{k}" for k in _POOL_KEYS)

#: Every key of an estimate request, in the order of ``pdplanner estimate --help``.
ESTIMATE_KEYS: tuple[str, ...] = (
    *_COMMON_KEYS,
    *_PARALLEL_KEYS,
    "batch",
    "context",
    "concurrency",
    "rate",
    "chunk_tokens",
    *_PREFILL_KEYS,
    *_DECODE_KEYS,
    "decode_gpu",
    "engine_arg",
)

_STRING_KEYS = frozenset(
    ("model", "gpu", "decode_gpu", "dtype", "kv_dtype", "engine", "phase", "mode")
)
_FLOAT_KEYS = frozenset(("memory_fraction",))

# Which keys each kind of estimate accepts beyond the common ones, and which it requires.
_ACCEPTS: dict[str, frozenset[str]] = {
    "prefill": frozenset((*_PARALLEL_KEYS, "batch")),
    "decode": frozenset((*_PARALLEL_KEYS, "batch", "context")),
    "agg": frozenset((*_PARALLEL_KEYS, "concurrency", "rate", "chunk_tokens", "engine_arg")),
    "disagg": frozenset(
        (*_PREFILL_KEYS, *_DECODE_KEYS, "decode_gpu", "concurrency", "rate", "engine_arg")
    ),
}
_REQUIRES: dict[str, tuple[str, ...]] = {
    "prefill": ("tp", "batch"),
    "decode": ("tp", "batch"),
    "agg": ("tp",),  # and concurrency (closed loop) or rate (Poisson): the planner checks
    "disagg": ("prefill_tp", "prefill_workers", "decode_tp", "decode_workers", "decode_batch"),
}
_KIND_FLAG = {"prefill": "phase", "decode": "phase", "agg": "mode", "disagg": "mode"}


def flag(key: str) -> str:
    """The command-line flag of a snake_case key: ``prefill_tp`` -> ``--prefill-tp``."""
    return "--" + key.replace("_", "-")


# Domain field-path segments that only group fields and have no flag of their own.
_GROUPS = frozenset(
    ("parallelism", "precision", "workload", "slo", "slos", "limits", "request", "scenario")
)
# Domain names whose flag is spelt differently.
_RENAMES = {
    "rate_per_s": "rate",
    "engine_args": "engine_arg",
    "min_tokens_per_s_per_user": "min_tokens_per_user",
    "modes": "mode",
    "models": "model",  # a sweep request's lists
    "gpu_types": "gpu",
    "model_id": "name",  # CreateModel / CreateGpu: the entry's name, `--name` in the CLI
    "gpu_id": "name",
}
_INDEX = re.compile(r"\[\d+\]")


def flag_for(
    path: str, known: Collection[str], *, as_flag: bool = True, traffic: str | None = None
) -> str:
    """Name the flag (or JSON key) behind a planner field path, keeping what does not map.

    ``parallelism.tp`` -> ``--tp``, ``prefill.parallelism.tp`` -> ``--prefill-tp``,
    ``slo.ttft_ms`` -> ``--ttft-ms``, ``model.num_key_value_heads`` -> ``--model:
    num_key_value_heads``. ``traffic`` names the key that supplied the traffic (``mix``), whose
    entries keep their index; without it, ``traffic[0].isl`` maps to ``--isl``. ``known`` holds
    the keys this command has; a path none of whose prefixes is known is returned unchanged.
    ``phase|mode`` names several keys at once.
    """
    if "|" in path:
        return "/".join(
            flag_for(p, known, as_flag=as_flag, traffic=traffic) for p in path.split("|")
        )
    raw = [s for s in path.split(".") if s]
    if raw and _INDEX.sub("", raw[0]) == "traffic" and traffic is not None:
        name = flag(traffic) if as_flag else traffic
        return f"{name}: {path}"
    segments = [_INDEX.sub("", s) for s in raw]
    kept = [
        (i, _RENAMES.get(s, s))
        for i, s in enumerate(segments)
        if s not in _GROUPS and (s != "traffic" or "traffic" in known)
    ]
    for n in range(len(kept), 0, -1):
        key = "_".join(s for _, s in kept[:n])
        if key in known:
            name = flag(key) if as_flag else key
            last = kept[n - 1][0]
            rest = ".".join(raw[last + 1 :])
            return f"{name}: {rest}" if rest else name
    return path


def describe(exc: InvalidInputError, known: Collection[str], **kwargs: Any) -> str:
    """``--batch: must be at least 1``: the error with its field path named as the flag.

    An error on no field in particular (an empty field path) is its reason alone. When the
    request had several invalid fields the first is described and the others are counted and
    named: ``--batch: must be at least 1 (2 more: --tp, --isl)``.
    """
    return describe_as(exc, lambda field: flag_for(field, known, **kwargs))


def describe_as(exc: InvalidInputError, name: Callable[[str], str]) -> str:
    """:func:`describe` with the flags named by ``name`` (a field path to its flag)."""
    first = f"{name(exc.field)}: {exc.reason}" if exc.field else exc.reason
    others = [field for field, _ in exc.violations[1:]]
    if not others:
        return first
    names = ", ".join(name(f) if f else "(request)" for f in others)
    return f"{first} ({len(others)} more: {names})"


def _engine_args(value: Any) -> tuple[tuple[str, str], ...]:
    """``--engine-arg k=v`` (repeatable), or in JSON a list of ``"k=v"`` or an object."""
    if isinstance(value, Mapping):
        items = [f"{k}={v}" for k, v in value.items()]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise InvalidInputError("engine_arg", f"must be key=value pairs, got {value!r}")
    return tuple(parse_engine_arg(text, "engine_arg") for text in items)


def _typed(key: str, value: Any) -> Any:
    """Check one value's type (strings for names, integers for counts), as JSON gives them."""
    if key == "engine_arg":
        return _engine_args(value)
    if key == "rate":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInputError(key, f"must be a number, got {value!r}")
        return float(value)
    if key in _STRING_KEYS:
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(key, f"must be a non-empty string, got {value!r}")
        return value.strip()
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if key in _FLOAT_KEYS:
        if not is_number or not math.isfinite(value) or not 0.0 < value <= 1.0:
            raise InvalidInputError(key, f"must be a fraction in (0, 1], got {value!r}")
        return float(value)
    if not is_number or not math.isfinite(value) or int(value) != value:
        raise InvalidInputError(key, f"must be an integer, got {value!r}")
    return int(value)


def _parallelism(values: Mapping[str, Any], prefix: str = "") -> Parallelism:
    return Parallelism(
        tp=values.get(f"{prefix}tp", 1),
        pp=values.get(f"{prefix}pp", 1),
        ep=values.get(f"{prefix}ep", 1),
        attention_dp=values.get(f"{prefix}attention_dp", 1),
    )


def estimate_request(fields: Mapping[str, Any]) -> EstimateRequest:
    """Build an estimate request from flag values or one JSON Lines object (snake_case keys).

    ``None`` values count as absent. Exactly one of ``phase`` and ``mode`` must be given; each
    kind of estimate requires its own keys and rejects the keys of the others, so a flag that
    would be silently ignored is an error instead.
    """
    v = Violations()
    for key in sorted(set(fields) - set(ESTIMATE_KEYS)):
        v.add(key, f"unknown key; known: {', '.join(ESTIMATE_KEYS)}")
    given = [k for k in ESTIMATE_KEYS if fields.get(k) is not None]
    values: dict[str, Any] = {}
    for key in given:
        with v.check():
            values[key] = _typed(key, fields[key])
    for key in ("model", "gpu", "isl", "osl"):
        if key not in given:
            v.add(key, "is required")
    phase, mode = values.get("phase"), values.get("mode")
    if ("phase" in given) == ("mode" in given):
        v.add("phase|mode", "give exactly one: a phase (prefill, decode) or a mode (agg, disagg)")
    elif phase is not None and phase not in PHASES:
        v.add("phase", f"must be prefill or decode, got {phase!r}")
    elif mode is not None and mode not in MODES:
        v.add("mode", f"must be agg or disagg, got {mode!r}")
    elif phase is not None or mode is not None:
        _kind_keys(cast(str, phase or mode), given, v)
    v.raise_any()
    precision = Precision(
        dtype=values.get("dtype") or default_dtype(values.get("model")),
        kv_dtype=_kv_dtype(values.get("kv_dtype"), values.get("engine_arg", ())),
    )
    common: dict[str, Any] = {
        "model": values["model"],
        "gpu": values["gpu"],
        "isl": values["isl"],
        "osl": values["osl"],
        "precision": precision,
        "engine": values.get("engine", "vllm"),
        "memory_fraction": values.get("memory_fraction"),
    }
    if phase is not None:
        return EstimateRequest(
            **common,
            phase=cast(Phase, phase),
            parallelism=_parallelism(values),
            batch=values["batch"],
            context=values.get("context"),
        )
    if mode == "agg":
        return EstimateRequest(
            **common,
            mode="agg",
            parallelism=_parallelism(values),
            concurrency=values.get("concurrency"),
            rate_per_s=values.get("rate"),
            chunk_tokens=values.get("chunk_tokens"),
            engine_args=values.get("engine_arg", ()),
        )
    pools = {
        role: PoolSpec(
            parallelism=_parallelism(values, f"{role}_"),
            workers=values[f"{role}_workers"],
            batch=values.get(f"{role}_batch", 1),
            # the decode pool's own GPU type (None: the request's --gpu)
            gpu=values.get("decode_gpu") if role == "decode" else None,
        )
        for role in ("prefill", "decode")
    }
    return EstimateRequest(
        **common,
        mode="disagg",
        prefill=pools["prefill"],
        decode=pools["decode"],
        concurrency=values.get("concurrency"),
        rate_per_s=values.get("rate"),
        engine_args=values.get("engine_arg", ()),
    )


def _kind_keys(kind: str, given: Collection[str], v: Violations) -> None:
    """The keys a phase or mode needs, and those of other kinds that it would silently ignore."""
    for key in given:
        if key not in _COMMON_KEYS and key not in _ACCEPTS[kind]:
            where = [k for k in _ACCEPTS if key in _ACCEPTS[k]]
            sites = " or ".join(f"{flag(_KIND_FLAG[k])} {k}" for k in where)
            v.add(key, f"does not apply to {flag(_KIND_FLAG[kind])} {kind} (only to {sites})")
    for key in _REQUIRES[kind]:
        if key not in given:
            v.add(key, f"is required with {flag(_KIND_FLAG[kind])} {kind}")
    if kind == "agg" and "concurrency" not in given and "rate" not in given:
        v.add("concurrency", f"is required with {flag('mode')} agg (or give {flag('rate')})")


def parse_jsonl_line(line: str) -> EstimateRequest:
    """One line of ``pdplanner estimate --input``: a JSON object with snake_case flag names."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidInputError("", f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise InvalidInputError("", f"must be a JSON object, got {type(obj).__name__}")
    return estimate_request(obj)


# -- plan --------------------------------------------------------------------------------------


#: The keys (flags in snake_case) of ``pdplanner plan``, for naming fields in errors.
def check_memory_fraction(value: float) -> float:
    """``--memory-fraction``: a fraction in (0, 1]; ``InvalidInputError`` otherwise."""
    checked: float = _typed("memory_fraction", value)
    return checked


PLAN_KEYS: tuple[str, ...] = (
    "model", "gpu", "decode_gpu", "gpus", "prefill_gpus", "decode_gpus", "isl", "osl", "mix",
    "rate", "prefix_hit", "ttft_ms", "tpot_ms", "percentile", "min_tokens_per_user", "dtype",
    "kv_dtype", "engine", "memory_fraction", "engine_arg", "mode", "max_tp", "plot",
)  # fmt: skip


def _read_mix_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError("mix", f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InvalidInputError("mix", f"{path} is not a UTF-8 text file") from None


def _mix_number(value: Any, kind: type, where: str) -> Any:
    """An ``isl``/``osl`` (integer) or ``weight`` (number) from a CSV cell or JSON value."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            raise InvalidInputError("mix", f"{where}: must be a number, got {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError("mix", f"{where}: must be a number, got {value!r}")
    if kind is int:
        if int(value) != value:
            raise InvalidInputError("mix", f"{where}: must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _mix_rows(rows: Iterable[Mapping[str, Any]], label: str) -> tuple[Workload, ...]:
    out = []
    for i, row in enumerate(rows, start=1):
        where = f"{label} {i}"
        missing = [k for k in ("isl", "osl") if row.get(k) in (None, "")]
        if missing:
            raise InvalidInputError("mix", f"{where}: {missing[0]} is missing")
        weight = row.get("weight")
        out.append(
            Workload(
                isl=_mix_number(row["isl"], int, f"{where} isl"),
                osl=_mix_number(row["osl"], int, f"{where} osl"),
                weight=1.0
                if weight in (None, "")
                else _mix_number(weight, float, f"{where} weight"),
            )
        )
    if not out:
        raise InvalidInputError("mix", "holds no traffic buckets")
    return tuple(out)


def traffic_from_mix(path: str) -> tuple[Workload, ...]:
    """Read a traffic mix: CSV with a header ``isl,osl,weight`` or a JSON list of such objects.

    ``weight`` may be left out (1.0); the planner normalises the weights. A file that ends in
    ``.json``, or whose text starts with ``[``, is read as JSON; anything else as CSV.
    """
    text = _read_mix_text(path)
    if path.lower().endswith(".json") or text.lstrip().startswith("["):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(
                "mix", f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})"
            ) from None
        if not isinstance(doc, list) or not all(isinstance(o, dict) for o in doc):
            raise InvalidInputError(
                "mix", "a JSON mix must be a list of {isl, osl, weight} objects"
            )
        return _mix_rows(doc, "entry")
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    if "isl" not in header or "osl" not in header:
        raise InvalidInputError("mix", f"{path}: a CSV mix needs a header line isl,osl,weight")
    reader.fieldnames = header
    rows = [r for r in reader if any((v or "").strip() for v in r.values() if isinstance(v, str))]
    return _mix_rows(rows, "row")


def parse_traffic_pair(text: str) -> Workload:
    """``4000:500`` -> ``Workload(isl=4000, osl=500)`` (``pdplanner sweep --traffic``)."""
    parts = text.split(":")
    if len(parts) != 2:
        raise InvalidInputError("traffic", f"expected ISL:OSL, got {text!r}")
    try:
        isl, osl = (int(p.strip()) for p in parts)
    except ValueError:
        raise InvalidInputError("traffic", f"expected ISL:OSL as integers, got {text!r}") from None
    return Workload(isl=isl, osl=osl)


def plan_modes(mode: str) -> tuple[Mode, ...]:
    """``--mode agg|disagg|both`` -> ``SearchLimits.modes``."""
    if mode not in PLAN_MODES:
        raise InvalidInputError("mode", f"must be agg, disagg or both, got {mode!r}")
    return PLAN_MODES[mode]


def _kv_dtype(kv_dtype: object, engine_args: Iterable[tuple[str, str]]) -> str:
    """``--kv-dtype`` checked against ``kv_cache_dtype`` among the engine arguments (two settings
    of one knob must agree, as the memory fraction's do); not given: the engine argument's, else
    bf16."""
    given = {k: v for k, v in engine_args}.get("kv_cache_dtype")
    if isinstance(kv_dtype, str) and given not in (None, "auto", kv_dtype):
        raise InvalidInputError(
            "engine_arg",
            f"kv_cache_dtype={given} but --kv-dtype is {kv_dtype}; give one, or the same value",
        )
    if isinstance(kv_dtype, str) and kv_dtype:
        return kv_dtype
    # the engine argument alone: the request says it too, so the header shows what is priced
    return given if given in ("bf16", "fp8") else DEFAULT_DTYPE


def default_dtype(model: object) -> str:
    """The GEMM precision a command uses without ``--dtype``: the checkpoint's
    (``catalog.checkpoint_dtype``: fp8 for a model named by its FP8 release, published in FP8
    only, or whose config.json quantizes to FP8), so that naming Qwen/Qwen3-235B-A22B-FP8 plans
    that checkpoint, not a bf16 one. A model file is read for its quantization; a name this
    machine's catalog does not know (a server's custom model) goes by the name alone."""
    if not isinstance(model, str) or not model:
        return DEFAULT_DTYPE
    models = default_models()
    if is_model_path(model):
        try:
            return checkpoint_dtype(models.load(model), models)
        except PlannerError:
            return DEFAULT_DTYPE  # the command reports the bad file itself
    return checkpoint_dtype(model, models)


def plan_request(
    *,
    model: str | None,
    gpu: str | None,
    gpus: int | None,
    ttft_ms: float | None,
    tpot_ms: float | None,
    isl: int | None = None,
    osl: int | None = None,
    mix: str | None = None,
    decode_gpu: str | None = None,
    prefill_gpus: int | None = None,
    decode_gpus: int | None = None,
    rate: float | None = None,
    prefix_hit: float | None = None,
    percentile: str = "p50",
    min_tokens_per_user: float | None = None,
    dtype: str | None = None,
    kv_dtype: str | None = None,
    engine: str = "vllm",
    mode: str = "both",
    max_tp: int | None = None,
    allow_pp: bool = True,
    allow_ep: bool = True,
    allow_attention_dp: bool = True,
    memory_fraction: float | None = None,
    engine_arg: list[str] | None = None,
) -> PlanRequest:
    """Build a plan request from ``pdplanner plan``'s flags (traffic from ISL/OSL or a mix file)."""
    required = {"model": model, "gpu": gpu, "gpus": gpus, "ttft_ms": ttft_ms, "tpot_ms": tpot_ms}
    for key, value in required.items():
        if value is None:
            raise InvalidInputError(key, "is required")
    if mix is not None:
        if isl is not None or osl is not None:
            raise InvalidInputError("mix", "give either --mix or --isl/--osl, not both")
        traffic = traffic_from_mix(mix)
    elif isl is None or osl is None:
        missing = "isl" if isl is None else "osl"
        raise InvalidInputError(missing, "is required (or give a traffic mix with --mix FILE)")
    else:
        traffic = (Workload(isl=isl, osl=osl),)
    if percentile not in PERCENTILES:
        raise InvalidInputError("percentile", f"must be p50, p90 or p99, got {percentile!r}")
    if memory_fraction is not None:
        check_memory_fraction(memory_fraction)
    limits = SearchLimits(
        max_tp=max_tp,
        allow_pp=allow_pp,
        allow_ep=allow_ep,
        allow_attention_dp=allow_attention_dp,
        modes=plan_modes(mode),
    )
    return PlanRequest(
        model=cast(str, model),
        gpu=cast(str, gpu),
        gpus=cast(int, gpus),
        traffic=traffic,
        slo=Slo(
            ttft_ms=cast(float, ttft_ms),
            tpot_ms=cast(float, tpot_ms),
            percentile=percentile,
            min_tokens_per_s_per_user=min_tokens_per_user,
        ),
        decode_gpu=decode_gpu,
        prefill_gpus=prefill_gpus,
        decode_gpus=decode_gpus,
        rate_per_s=rate,
        prefix_hit=0.0 if prefix_hit is None else prefix_hit,
        precision=Precision(
            dtype=dtype or default_dtype(model),
            kv_dtype=_kv_dtype(kv_dtype, _engine_args(engine_arg) if engine_arg else ()),
        ),
        engine=engine,
        limits=limits,
        memory_fraction=memory_fraction,
        engine_args=_engine_args(engine_arg) if engine_arg else (),
    )


PlotFormat = Literal["png", "svg"]


def plot_format(path: str) -> PlotFormat:
    """The image format of ``--plot FILE``, from its suffix (png or svg)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in ("png", "svg"):
        raise InvalidInputError("plot", f"must end in .png or .svg, got {path!r}")
    return cast(PlotFormat, suffix)

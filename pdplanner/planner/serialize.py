"""The stored JSON form of the planner's requests and results, in both directions.

What a database keeps must be readable by every later version, so it is its own format, written
from the dataclasses' fields and tagged with ``SCHEMA_VERSION``; it is not the CLI's ``--json``
output (``PlanResult.to_dict``), which is shaped for people and may change with them.

Version 1: every dataclass is a JSON object of its fields (field names as in
``pdplanner.planner.types``), tuples are lists, ``None`` is ``null``; the top-level object carries
``"schema_version": 1``. Records without a version were written before this module existed, with
``to_dict``'s shape for results (``pareto: {agg, disagg}``, pools keyed by role); ``*_from_json``
still reads them.

    >>> req = PlanRequest("llama-3.1-8b", "h100-sxm", 8, (Workload(4000, 500),), Slo(1000, 20))
    >>> plan_request_from_json(plan_request_to_json(req)) == req
    True

A sweep scenario's error is stored as text (``scenario_error_to_text``): version 1 is the JSON
object ``{"schema_version": 1, "violations": [{"field": ..., "reason": ...}, ...]}``; rows
written before it hold one ``"field: reason"`` string, which ``scenario_error_from_text`` splits
at its first ``": "`` (the only place that string form is still parsed).

Errors: ``StoredFormatError`` (a ``ValueError``) for a record this version cannot read.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeVar, Union, cast

from pdplanner.planner.sweep import ScenarioError
from pdplanner.planner.types import PlanRequest, PlanResult

SCHEMA_VERSION: Final = 1
_VERSION_KEY: Final = "schema_version"

T = TypeVar("T")


class StoredFormatError(ValueError):
    """A stored record that this version of the planner cannot read."""


def to_json(value: Any) -> Any:
    """A dataclass (or a value inside one) as plain JSON values: objects, lists, scalars."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a dataclass (``from __future__ import annotations`` leaves
    strings), computed once per class."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def from_json(cls: type[T], data: Mapping[str, Any]) -> T:
    """The dataclass ``cls`` from ``to_json``'s output; absent keys take the field defaults."""
    return cast(T, _decoder(cls, cls.__name__)(data))


Decoder = Callable[[Any], Any]
_DECODERS: dict[tuple[Any, str], Decoder] = {}


def _decoder(tp: Any, where: str) -> Decoder:
    """A function that reads a JSON value of type ``tp``, built once per (type, field): the
    type is inspected when the decoder is built, not for every value (a listing of 50 stored
    plans reads ~150,000 values)."""
    key = (tp, where)
    found = _DECODERS.get(key)
    if found is None:
        found = _DECODERS[key] = _build_decoder(tp, where)
    return found


def _build_decoder(tp: Any, where: str) -> Decoder:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        read_inner = _decoder(inner, where)
        return lambda value: None if value is None else read_inner(value)
    if origin is tuple:
        (inner, _) = typing.get_args(tp)
        read_item = _decoder(inner, where)
        return lambda value: tuple(read_item(v) for v in value)
    if origin is Literal or tp in (str, bool) or origin is dict or tp is Any:
        return lambda value: value
    if tp is float:
        return float  # JSON may hand back 2 for 2.0
    if tp is int:
        return int
    if dataclasses.is_dataclass(tp):
        return _dataclass_decoder(cast(type, tp))
    raise StoredFormatError(f"{where}: cannot read a value of type {tp}")  # pragma: no cover


def _dataclass_decoder(cls: type) -> Decoder:
    hints = _hints(cls)
    fields = [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]
    built: list[list[tuple[str, Decoder]]] = []

    def read(data: Mapping[str, Any]) -> Any:
        if not built:  # built on first use (a dataclass may refer to itself), swapped in whole
            built[:] = [[(name, _decoder(tp, name)) for name, tp in fields]]
        readers = built[0]
        kwargs = {name: reader(data[name]) for name, reader in readers if name in data}
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a required field is missing
            raise StoredFormatError(f"{cls.__name__}: {exc}") from None

    return read


def _versioned(value: Any) -> dict[str, Any]:
    return {_VERSION_KEY: SCHEMA_VERSION, **to_json(value)}


def _version(data: Mapping[str, Any]) -> int:
    version = data.get(_VERSION_KEY, 0)
    if version not in (0, SCHEMA_VERSION):
        raise StoredFormatError(
            f"stored record has schema version {version}; this planner reads up to {SCHEMA_VERSION}"
        )
    return int(version)


def plan_request_to_json(req: PlanRequest) -> dict[str, Any]:
    """The stored form of a plan request."""
    return _versioned(req)


def plan_request_from_json(data: Mapping[str, Any]) -> PlanRequest:
    """Inverse of ``plan_request_to_json`` (versions 0 and 1 have the same request shape)."""
    _version(data)
    return from_json(PlanRequest, data)


def plan_result_to_json(result: PlanResult) -> dict[str, Any]:
    """The stored form of a plan result."""
    return _versioned(result)


def plan_result_from_json(data: Mapping[str, Any]) -> PlanResult:
    """Inverse of ``plan_result_to_json``; also reads the unversioned ``to_dict`` records."""
    if _version(data) == SCHEMA_VERSION:
        return from_json(PlanResult, data)
    pareto = data.get("pareto") or {}
    legacy = {
        **data,
        "pareto_agg": [_legacy_deployment(d) for d in pareto.get("agg", ())],
        "pareto_disagg": [_legacy_deployment(d) for d in pareto.get("disagg", ())],
    }
    for key in ("best", "best_agg", "best_disagg", "closest", "for_rate"):
        if legacy.get(key) is not None:
            legacy[key] = _legacy_deployment(legacy[key])
    return from_json(PlanResult, legacy)


def scenario_error_to_text(error: ScenarioError) -> str:
    """The stored form of a scenario's error: every (field, reason), as versioned JSON text."""
    violations = [{"field": f, "reason": r} for f, r in error.violations]
    return json.dumps({_VERSION_KEY: SCHEMA_VERSION, "violations": violations})


def scenario_error_from_text(text: str) -> ScenarioError:
    """Inverse of ``scenario_error_to_text``; also reads the ``"field: reason"`` rows before it."""
    if text.startswith("{"):
        try:
            data = json.loads(text)
            _version(data)
            return ScenarioError.of([(v["field"], v["reason"]) for v in data["violations"]])
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, StoredFormatError):
                raise
            raise StoredFormatError(f"stored scenario error is not readable: {exc}") from None
    field, sep, reason = text.partition(": ")
    return ScenarioError(field, reason) if sep else ScenarioError("", text)


_ROLE_ORDER: Final = {"prefill": 0, "decode": 1, "agg": 2}


def _legacy_deployment(data: Mapping[str, Any]) -> dict[str, Any]:
    """``Deployment.to_dict``'s shape (pools keyed by role) as version 1's (a list of pools).

    Pools come back prefill, decode, agg: JSONB does not keep the order of an object's keys.
    """
    pools = sorted((data.get("pools") or {}).items(), key=lambda kv: _ROLE_ORDER.get(kv[0], 99))
    return {**data, "pools": [{"role": role, **p} for role, p in pools]}


__all__ = [
    "SCHEMA_VERSION",
    "StoredFormatError",
    "from_json",
    "plan_request_from_json",
    "plan_request_to_json",
    "plan_result_from_json",
    "plan_result_to_json",
    "scenario_error_from_text",
    "scenario_error_to_text",
    "to_json",
]

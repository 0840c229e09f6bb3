"""The stored JSON form of the planner's requests and results, in both directions.

What a database keeps must be readable by every later version, so it is its own format, written
from the dataclasses' fields and tagged with ``SCHEMA_VERSION``; it is not the CLI's ``--json``
output (``PlanResult.to_dict``), which is shaped for people and may change with them.

Version 1: every dataclass is a JSON object of its fields (field names as in ``planner.types``),
tuples are lists, ``None`` is ``null``; the top-level object carries ``"schema_version": 1``.
Records without a version were written before this module existed, with ``to_dict``'s shape for
results (``pareto: {agg, disagg}``, pools keyed by role); ``*_from_json`` still reads them.

    >>> req = PlanRequest("llama-3.1-8b", "h100-sxm", 8, (Workload(4000, 500),), Slo(1000, 20))
    >>> plan_request_from_json(plan_request_to_json(req)) == req
    True

Errors: ``StoredFormatError`` (a ``ValueError``) for a record this version cannot read.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Final, Literal, TypeVar, Union

from planner.types import PlanRequest, PlanResult

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
    hints = _hints(cls)
    kwargs = {
        f.name: _decode(hints[f.name], data[f.name], f.name)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name in data
    }
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise StoredFormatError(f"{cls.__name__}: {exc}") from None


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _decode(inner, value, where)
    if origin is tuple:
        (inner, _) = typing.get_args(tp)
        return tuple(_decode(inner, v, where) for v in value)
    if origin is Literal or tp in (str, bool) or origin is dict or tp is Any:
        return value
    if tp is float:
        return float(value)  # JSON may hand back 2 for 2.0
    if tp is int:
        return int(value)
    if dataclasses.is_dataclass(tp):
        return from_json(tp, value)  # type: ignore[arg-type]
    raise StoredFormatError(f"{where}: cannot read a value of type {tp}")  # pragma: no cover


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
    "to_json",
]

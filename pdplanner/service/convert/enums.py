"""Proto enum values <-> the planner's strings, read from the proto descriptors.

A value ``MODE_AGG`` of enum ``Mode`` is the domain string ``"agg"``: the value's name without the
enum's prefix (the part before ``UNSPECIFIED`` of its zero value), in lower case. Nothing is
retyped, so a value added to a .proto is known here as soon as the stubs are regenerated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, Literal, TypeVar, cast

from google.protobuf.descriptor import EnumDescriptor

from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.types import Mode, Percentile, Phase
from pdplanner.storage.records import SweepState
from pdplanner.v1 import catalog_pb2, common_pb2, plan_pb2, sweep_pb2

S = TypeVar("S", bound=str)
V = TypeVar("V", bound=int)

Role = Literal["prefill", "decode", "agg"]
Attention = Literal["gqa", "mla"]


class ProtoEnum(Generic[S, V]):
    """One proto enum as its domain strings; ``renames`` maps a derived string to the domain's."""

    def __init__(self, descriptor: EnumDescriptor, renames: Mapping[str, str] | None = None):
        zero = descriptor.values_by_number[0].name
        prefix = zero.removesuffix("UNSPECIFIED")
        renames = renames or {}
        self._names: dict[int, str] = {}
        for value in descriptor.values:
            if value.number != 0:
                plain = value.name.removeprefix(prefix).lower()
                self._names[value.number] = renames.get(plain, plain)
        self._numbers = {name: number for number, name in self._names.items()}
        self.proto_names = tuple(v.name for v in descriptor.values if v.number != 0)

    def to_proto(self, name: S | None) -> V:
        """The number of a domain string; None is the ``_UNSPECIFIED`` zero value."""
        return cast(V, 0 if name is None else self._numbers[name])

    def from_proto(self, number: int, path: str) -> S:
        """The domain string of a set value; ``_UNSPECIFIED`` and unknown numbers are errors."""
        if number in self._names:
            return cast(S, self._names[number])
        allowed = ", ".join(self.proto_names)
        if number == 0:
            raise InvalidInputError(path, f"is required: one of {allowed}")
        raise InvalidInputError(path, f"unknown value {number}; expected one of {allowed}")

    def optional_from_proto(self, number: int, path: str) -> S | None:
        """As ``from_proto``, with ``_UNSPECIFIED`` meaning None."""
        return None if number == 0 else self.from_proto(number, path)


MODE: ProtoEnum[Mode, common_pb2.Mode.ValueType] = ProtoEnum(common_pb2.Mode.DESCRIPTOR)
PHASE: ProtoEnum[Phase, common_pb2.Phase.ValueType] = ProtoEnum(common_pb2.Phase.DESCRIPTOR)
PERCENTILE: ProtoEnum[Percentile, common_pb2.Percentile.ValueType] = ProtoEnum(
    common_pb2.Percentile.DESCRIPTOR
)
POOL_ROLE: ProtoEnum[Role, plan_pb2.PoolRole.ValueType] = ProtoEnum(plan_pb2.PoolRole.DESCRIPTOR)
ATTENTION: ProtoEnum[Attention, catalog_pb2.AttentionKind.ValueType] = ProtoEnum(
    catalog_pb2.AttentionKind.DESCRIPTOR
)
PlanView = Literal["basic", "full"]
PLAN_VIEW: ProtoEnum[PlanView, plan_pb2.PlanView.ValueType] = ProtoEnum(
    plan_pb2.PlanView.DESCRIPTOR
)
SWEEP_STATE: ProtoEnum[SweepState, sweep_pb2.Sweep.State.ValueType] = ProtoEnum(
    sweep_pb2.Sweep.State.DESCRIPTOR, renames={"succeeded": "done"}
)

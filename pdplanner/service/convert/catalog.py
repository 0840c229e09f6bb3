"""Catalog entries, domain <-> proto (``Model``, ``Gpu``), and the stored form of custom ones.

A custom model is stored as ``{"hf_config": <config.json dict>, "aliases": [...], "request_id":
...}`` and a custom GPU as ``{"entry": <GPU data-file entry>, "request_id": ...}``; the
request_id lets a retried Create call recognise its own earlier success.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import struct_pb2

from pdplanner.planner.catalog import (
    GpuSpec,
    ModelSpec,
    gpu_from_entry,
    gpu_to_entry,
    model_from_hf_config,
)
from pdplanner.planner.errors import InvalidInputError
from pdplanner.service import resources
from pdplanner.service.convert.checks import finite
from pdplanner.service.convert.enums import ATTENTION
from pdplanner.v1 import catalog_pb2

_PROTO_MODEL = frozenset(catalog_pb2.Model.DESCRIPTOR.fields_by_name)
#: ModelSpec fields that are the Model message's fields of the same name.
_MODEL_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(ModelSpec)
    if f.name in _PROTO_MODEL and f.name not in ("name", "aliases", "attention")
)
#: ModelSpec fields derived from the others, which a Model message carries but does not set.
_DERIVED = ("total_params", "active_params", "linear_layer_params", "linear_state_elements")


def model_to_proto(spec: ModelSpec, *, custom: bool) -> catalog_pb2.Model:
    figures = {f: getattr(spec, f) for f in (*_MODEL_FIELDS, *_DERIVED)}
    return catalog_pb2.Model(
        name=resources.name("models", spec.name),
        aliases=list(spec.aliases),
        custom=custom,
        attention=ATTENTION.to_proto(spec.attention),
        **figures,
    )


def model_from_proto(msg: catalog_pb2.Model) -> ModelSpec:
    """The catalog spec of a ``Model`` message (``total_params``/``active_params`` are derived)."""
    figures = {f: getattr(msg, f) for f in _MODEL_FIELDS}
    return ModelSpec(
        name=resources.strip(msg.name, "models"),
        attention=ATTENTION.from_proto(msg.attention, "attention"),
        aliases=tuple(msg.aliases),
        **figures,
    )


def gpu_to_proto(spec: GpuSpec, *, custom: bool) -> catalog_pb2.Gpu:
    return catalog_pb2.Gpu(
        name=resources.name("gpus", spec.name),
        aliases=list(spec.aliases),
        custom=custom,
        flops_per_s=catalog_pb2.FlopsPerS(
            bf16=spec.bf16_flops_per_s, fp8=spec.fp8_flops_per_s, fp4=spec.fp4_flops_per_s
        ),
        hbm_bytes=spec.hbm_bytes,
        hbm_bytes_per_s=spec.hbm_bytes_per_s,
        nvlink_bytes_per_s=spec.nvlink_bytes_per_s,
        nvlink_domain_size=spec.nvlink_domain_size,
        scaleout_bytes_per_s=spec.scaleout_bytes_per_s,
        calibration=spec.calibration,
        hbm_datasheet_bytes=spec.hbm_datasheet_bytes,
        hbm_reported=spec.hbm_reported,
        source=spec.source,
    )


def gpu_from_proto(msg: catalog_pb2.Gpu) -> GpuSpec:
    return gpu_from_entry(gpu_entry_from_proto(msg, resources.strip(msg.name, "gpus")), "gpu")


def gpu_entry_from_proto(msg: catalog_pb2.Gpu, gpu_id: str) -> dict[str, Any]:
    """The GPU data-file entry (``gpu_from_entry``'s input) of a ``Gpu`` message.

    The entry's keys are the message's field names, so the catalog's checks name proto paths when
    given ``field_path="gpu"`` (``gpu.hbm_bytes``, ``gpu.flops_per_s.bf16``).
    """
    flops = {"bf16": msg.flops_per_s.bf16}
    flops.update({d: v for d, v in (("fp8", msg.flops_per_s.fp8), ("fp4", msg.flops_per_s.fp4))
                  if v})  # fmt: skip
    entry: dict[str, Any] = {
        "name": gpu_id,
        "aliases": list(msg.aliases),
        "flops_per_s": flops,
        "hbm_bytes": msg.hbm_bytes,
        "hbm_bytes_per_s": msg.hbm_bytes_per_s,
        "nvlink_bytes_per_s": msg.nvlink_bytes_per_s,
        "nvlink_domain_size": msg.nvlink_domain_size,
        "scaleout_bytes_per_s": msg.scaleout_bytes_per_s,
    }
    if msg.calibration:
        entry["calibration"] = msg.calibration
    for key in ("hbm_datasheet_bytes", "hbm_reported", "source"):
        if getattr(msg, key):
            entry[key] = getattr(msg, key)
    for key in ("hbm_bytes", "hbm_bytes_per_s", "nvlink_bytes_per_s", "scaleout_bytes_per_s",
                "hbm_datasheet_bytes"):  # fmt: skip
        finite(entry.get(key, 0.0), f"gpu.{key}")
    for dtype, value in flops.items():
        finite(value, f"gpu.flops_per_s.{dtype}")
    return entry


def struct_to_dict(s: struct_pb2.Struct, path: str = "config") -> dict[str, Any]:
    """A Struct (e.g. a config.json sent as one) as a dict; integral numbers come back as ints.

    A Struct holds every number as a double; config.json integers (layer counts, sizes) are what
    the readers expect, and no config value is an integral float whose type matters.
    """

    return {key: _plain(value, f"{path}.{key[:60]}") for key, value in s.fields.items()}


def _plain(value: struct_pb2.Value, path: str) -> Any:
    """One Struct value as plain Python; NaN and infinities are the field's error (no JSON
    column stores them, and json_format refuses them with a ValueError)."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidInputError(path, f"must be a finite number, got {number}")
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "struct_value":
        return {k: _plain(v, f"{path}.{k[:60]}") for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value.list_value.values)]
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


# -- custom catalog entries as stored ------------------------------------------------------------


def custom_model_record(
    config: Mapping[str, Any], aliases: Sequence[str], request_id: str | None
) -> dict[str, Any]:
    """The stored form of a custom model."""
    return {"hf_config": dict(config), "aliases": list(aliases), "request_id": request_id}


def custom_model_from_record(name: str, spec: Mapping[str, Any]) -> ModelSpec:
    """The catalog spec of a stored custom model."""
    model = model_from_hf_config(spec["hf_config"], name, f"custom model {name}")
    return dataclasses.replace(model, aliases=tuple(spec.get("aliases") or ()))


def custom_gpu_record(gpu: GpuSpec, request_id: str | None) -> dict[str, Any]:
    """The stored form of a custom GPU."""
    return {"entry": gpu_to_entry(gpu), "request_id": request_id}


def custom_gpu_from_record(spec: Mapping[str, Any]) -> GpuSpec:
    """The catalog spec of a stored custom GPU."""
    entry = spec["entry"]
    return gpu_from_entry(entry, f"custom GPU {entry.get('name')}")

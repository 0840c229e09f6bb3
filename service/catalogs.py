"""The catalogs a call sees: built-in entries plus the custom ones stored in the database.

Look-ups are by name or alias only; nothing here reads a file, so no caller can make the server
read a path. ``CatalogCache`` rebuilds the catalogs only when the stored custom entries change.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from planner.catalog import GpuCatalog, GpuSpec, ModelCatalog, ModelSpec
from planner.errors import UnknownEntryError
from service import convert
from storage.records import StoredEntry
from storage.repository import PlanStore


@dataclass(frozen=True)
class Catalogs:
    """The built-in catalogs plus the stored custom entries, with name-only look-ups."""

    models: ModelCatalog
    gpus: GpuCatalog
    custom_models: frozenset[str]
    custom_gpus: frozenset[str]

    @classmethod
    def build(cls, models: Sequence[ModelSpec], gpus: Sequence[GpuSpec]) -> Catalogs:
        return cls(
            models=ModelCatalog(extra=list(models)),
            gpus=GpuCatalog(extra=list(gpus)),
            custom_models=frozenset(m.name for m in models),
            custom_gpus=frozenset(g.name for g in gpus),
        )

    def model(self, name: str, field: str) -> ModelSpec:
        """The model named ``name`` (or an alias); ``UnknownEntryError`` on ``field`` otherwise."""
        spec = self.models.find(name)
        if spec is None:
            raise UnknownEntryError(field, "model", name, self.models.names())
        return spec

    def gpu(self, name: str, field: str) -> GpuSpec:
        """The GPU named ``name`` (or an alias); ``UnknownEntryError`` on ``field`` otherwise."""
        spec = self.gpus.find(name)
        if spec is None:
            raise UnknownEntryError(field, "GPU", name, self.gpus.names())
        return spec


class CatalogCache:
    """Catalogs rebuilt only when the stored custom entries change (checked on every call, so
    entries created through another server process sharing the database are seen too)."""

    def __init__(self, store: PlanStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._key: tuple[tuple[Any, ...], tuple[Any, ...]] | None = None
        self._catalogs: Catalogs | None = None

    def current(self) -> Catalogs:
        models = self._store.list_custom_models()
        gpus = self._store.list_custom_gpus()
        key = (_entries_key(models), _entries_key(gpus))
        with self._lock:
            if self._catalogs is None or key != self._key:
                self._catalogs = Catalogs.build(
                    [convert.custom_model_from_record(e.name, e.spec) for e in models],
                    [convert.custom_gpu_from_record(e.spec) for e in gpus],
                )
                self._key = key
            return self._catalogs


def _entries_key(entries: Sequence[StoredEntry]) -> tuple[Any, ...]:
    return tuple((e.name, e.created_at) for e in entries)

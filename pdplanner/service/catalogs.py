"""The catalogs a call sees: built-in entries plus the custom ones stored in the database.

Look-ups are by name or alias only; nothing here reads a file, so no caller can make the server
read a path. ``CatalogCache`` rebuilds the catalogs only when the stored custom entries change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pdplanner.planner.catalog import GpuCatalog, GpuSpec, ModelCatalog, ModelSpec
from pdplanner.planner.errors import UnknownEntryError
from pdplanner.planner.validate import Violations
from pdplanner.service import convert
from pdplanner.storage.records import StoredEntry
from pdplanner.storage.repository import PlanStore

log = logging.getLogger("pdplanner.catalog")
T = TypeVar("T")


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

    def deployment(
        self, model: str, gpu: str, decode_gpu: str | None = None
    ) -> tuple[ModelSpec, GpuSpec]:
        """The model and GPU a request deploys, its decode pool's GPU checked too; every unknown
        name raises at once (``InvalidFields`` when there are several)."""
        v = Violations()
        found_model = v.value(lambda: self.model(model, "model"))
        found_gpu = v.value(lambda: self.gpu(gpu, "gpu"))
        if decode_gpu is not None:
            v.value(lambda: self.gpu(decode_gpu, "decode_gpu"))
        v.raise_any()
        assert found_model is not None and found_gpu is not None
        return found_model, found_gpu


class CatalogCache:
    """Catalogs rebuilt only when the stored custom entries change.

    Every call reads the store's ``custom_entries_version`` (one small query, so entries created
    through another server process sharing the database are seen too) and reads the entries
    themselves only when it changed. A stored entry that no longer converts (stored by an older
    version with other checks) is logged and left out, so it cannot fail every call."""

    def __init__(self, store: PlanStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._version: tuple[Any, ...] | None = None
        self._catalogs: Catalogs | None = None

    def invalidate(self) -> None:
        """Forget the cached catalogs (after a delete, whose version may not differ in time)."""
        with self._lock:
            self._version = None
            self._catalogs = None

    def current(self) -> Catalogs:
        version = self._store.custom_entries_version()
        with self._lock:
            if self._catalogs is not None and version == self._version:
                return self._catalogs
        models = _usable(self._store.list_custom_models(), "model",
                         lambda e: convert.custom_model_from_record(e.name, e.spec))  # fmt: skip
        gpus = _usable(self._store.list_custom_gpus(), "GPU",
                       lambda e: convert.custom_gpu_from_record(e.spec))  # fmt: skip
        built = Catalogs.build(models, gpus)
        with self._lock:
            self._catalogs, self._version = built, version
        return built


def _usable(
    entries: Sequence[StoredEntry], kind: str, build: Callable[[StoredEntry], T]
) -> list[T]:
    out: list[T] = []
    for entry in entries:
        try:
            out.append(build(entry))
        except Exception:  # one bad stored entry must not take the whole catalog down
            log.error("stored custom %s %r is not usable; left out", kind, entry.name,
                      exc_info=True)  # fmt: skip
    return out

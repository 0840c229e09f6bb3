"""The look-up shared by the model and GPU catalogs: by name or alias; files only when asked.

``get`` (what the planner resolves request names with) never reads a file, so no request can make
a server read a path; ``load`` also reads a file and is the explicit step of an edge (the CLI)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from pdplanner.planner.catalog._data import normalise_name
from pdplanner.planner.errors import UnknownEntryError


class _Entry(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def aliases(self) -> tuple[str, ...]: ...


S = TypeVar("S", bound=_Entry)


class Catalog(ABC, Generic[S]):
    """Entries by name; names and aliases match ignoring case and '_' vs '-'. A name that is not
    an entry but looks like a file (``.json``/``.yaml``/``.yml``, or exists) is read from it."""

    kind = "entry"  # what the error message calls an entry

    def __init__(self, entries: list[S]) -> None:
        self._by_name: dict[str, S] = {}
        self._index: dict[str, str] = {}
        for spec in entries:
            self.add(spec)

    def add(self, spec: S) -> None:
        self._by_name[spec.name] = spec
        for key in (spec.name, *spec.aliases):
            self._index[normalise_name(key)] = spec.name

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def specs(self) -> list[S]:
        return [self._by_name[n] for n in self.names()]

    def find(self, name: str) -> S | None:
        """An entry by name or alias (never a file), or None."""
        key = self._index.get(normalise_name(name))
        return self._by_name[key] if key is not None else None

    def get(self, name: str, field_path: str) -> S:
        """An entry by name or alias; ``UnknownEntryError`` on ``field_path`` otherwise."""
        found = self.find(name)
        if found is None:
            raise UnknownEntryError(field_path, self.kind, name, self.names())
        return found

    def load(self, name_or_path: str, field_path: str) -> S:
        """An entry by name or alias, else read from the file ``name_or_path`` names."""
        found = self.find(name_or_path)
        if found is not None:
            return found
        if is_file_name(name_or_path):
            return self._from_file(name_or_path, field_path)
        raise UnknownEntryError(field_path, self.kind, name_or_path, self.names())

    @abstractmethod
    def _from_file(self, path: str, field_path: str) -> S:
        """Read one entry from ``path`` (each catalog has its own file format)."""


def is_file_name(value: str) -> bool:
    """Whether a model or GPU argument names a file (``.json``/``.yaml``/``.yml``, or exists)."""
    return value.endswith((".json", ".yaml", ".yml")) or Path(value).is_file()

"""A sweep: one plan per scenario of a grid, models x GPU types x traffic points x SLOs.

``SweepGrid`` is the grid and ``run_sweep`` plans its scenarios in grid order (the model varies
slowest, the SLO fastest), yielding one ``ScenarioOutcome`` per scenario as soon as it is known.
An invalid scenario (a TPOT target no configuration can have, say) is an outcome with a
``ScenarioError``, not the end of the sweep; it names every invalid field of the scenario by its
path into the grid (``slos[2].tpot_ms``, ``models[0]``), the names a ``pdplanner.v1.SweepRequest``
uses too.

Errors: a model or GPU name no scenario can use raises ``UnknownEntryError`` before anything is
planned (``check_names``); ``should_stop`` returning true raises ``SearchCancelled``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field

from pdplanner.planner.catalog import GpuCatalog, ModelCatalog, default_gpus, default_models
from pdplanner.planner.errors import InvalidInputError, SearchCancelled
from pdplanner.planner.search import plan
from pdplanner.planner.types import (
    DEFAULT_ENGINE,
    PlanRequest,
    PlanResult,
    Precision,
    SearchLimits,
    Slo,
    Workload,
)

#: The most scenarios one sweep may hold (a paper-scale sweep is 4 x 4 x 8 x 5 = 640).
MAX_SWEEP_SCENARIOS = 10_000


@dataclass(frozen=True)
class SweepGrid:
    """Every model x GPU type x traffic point x SLO, with the fields all scenarios share."""

    models: tuple[str, ...]
    gpu_types: tuple[str, ...]
    traffic: tuple[Workload, ...]
    slos: tuple[Slo, ...]
    gpus: int
    prefill_gpus: int | None = None
    decode_gpus: int | None = None
    rate_per_s: float | None = None
    prefix_hit: float = 0.0
    precision: Precision = field(default_factory=Precision)
    engine: str = DEFAULT_ENGINE
    limits: SearchLimits = field(default_factory=SearchLimits)
    memory_fraction: float | None = None  # the engine's memory fraction; None: its default

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(models, gpu_types, traffic, slos)."""
        return len(self.models), len(self.gpu_types), len(self.traffic), len(self.slos)

    def __len__(self) -> int:
        m, g, t, s = self.shape
        return m * g * t * s

    def scenarios(self) -> list[PlanRequest]:
        """The plan requests in grid order: the model varies slowest and the SLO fastest."""
        return [
            PlanRequest(
                model=model,
                gpu=gpu,
                gpus=self.gpus,
                traffic=(workload,),
                slo=slo,
                prefill_gpus=self.prefill_gpus,
                decode_gpus=self.decode_gpus,
                rate_per_s=self.rate_per_s,
                prefix_hit=self.prefix_hit,
                precision=self.precision,
                engine=self.engine,
                limits=self.limits,
                memory_fraction=self.memory_fraction,
            )
            for model in self.models
            for gpu in self.gpu_types
            for workload in self.traffic
            for slo in self.slos
        ]

    def field_path(self, scenario_field: str, index: int) -> str:
        """The grid path of scenario ``index``'s field: ``slo.tpot_ms`` -> ``slos[2].tpot_ms``.

        Fields every scenario shares (``gpus``, ``precision.dtype``) keep their path.
        """
        _, n_gpus, n_traffic, n_slos = self.shape
        position = {
            "model": ("models", index // (n_slos * n_traffic * n_gpus)),
            "gpu": ("gpu_types", (index // (n_slos * n_traffic)) % n_gpus),
            "traffic": ("traffic", (index // n_slos) % n_traffic),
            "slo": ("slos", index % n_slos),
        }
        head, dot, rest = scenario_field.partition(".")
        axis = position.get(head.split("[", 1)[0])
        if axis is None:
            return scenario_field
        return f"{axis[0]}[{axis[1]}]{dot}{rest}"


@dataclass(frozen=True)
class ScenarioError:
    """Why one scenario has no plan: the grid field at fault and the reason, and in ``more`` the
    (field, reason) of every further invalid field of the same scenario."""

    field: str
    reason: str
    more: tuple[tuple[str, str], ...] = ()

    @property
    def violations(self) -> tuple[tuple[str, str], ...]:
        """Every (field, reason), the first one first."""
        return ((self.field, self.reason), *self.more)

    @classmethod
    def of(cls, violations: Sequence[tuple[str, str]]) -> ScenarioError:
        """The error of these (field, reason) pairs; at least one."""
        (field, reason), *more = violations
        return cls(field, reason, tuple(more))

    def __str__(self) -> str:
        return "; ".join(f"{f}: {r}" if f else r for f, r in self.violations)


@dataclass(frozen=True)
class ScenarioOutcome:
    """One scenario's plan request and either its ``result`` or its ``error``."""

    index: int
    request: PlanRequest
    result: PlanResult | None
    error: ScenarioError | None


def check_names(
    grid: SweepGrid, models: ModelCatalog | None = None, gpus: GpuCatalog | None = None
) -> None:
    """Raise ``UnknownEntryError`` (on ``models[i]``/``gpu_types[i]``) for a name no catalog has."""
    models = models or default_models()
    gpus = gpus or default_gpus()
    for i, name in enumerate(grid.models):
        models.get(name, f"models[{i}]")
    for i, name in enumerate(grid.gpu_types):
        gpus.get(name, f"gpu_types[{i}]")


def run_sweep(
    grid: SweepGrid,
    models: ModelCatalog | None = None,
    gpus: GpuCatalog | None = None,
    should_stop: Callable[[], bool] | None = None,
    skip: Collection[int] = (),
) -> Iterator[ScenarioOutcome]:
    """Plan every scenario of ``grid`` whose index is not in ``skip``, in grid order."""
    check_names(grid, models, gpus)
    stop = should_stop or (lambda: False)
    for index, request in enumerate(grid.scenarios()):
        if index in skip:
            continue
        if stop():
            raise SearchCancelled("sweep stopped by its caller")
        try:
            result = plan(request, models, gpus, should_stop)
        except InvalidInputError as exc:
            error = ScenarioError.of([(grid.field_path(f, index), r) for f, r in exc.violations])
            yield ScenarioOutcome(index, request, None, error)
        else:
            yield ScenarioOutcome(index, request, result, None)

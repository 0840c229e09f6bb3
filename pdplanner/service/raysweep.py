"""A sweep fanned out to a Ray cluster: the same runner (``pdplanner.planner.sweep.run_sweep``) per
chunk.

``ray_sweep(grid, address)`` cuts the grid's scenario indices into chunks, runs each chunk as a
Ray task that calls ``run_sweep`` with every other index skipped, and gathers the outcomes back
into grid order; a scenario's outcome is the one the in-process sweep gives (its result's
``elapsed_ms`` aside, which is a timing). ``address``:

- ``local``: start a Ray instance on this machine for this sweep (``num_cpus`` caps it);
- ``auto``: the cluster this machine is a node of (``ray start`` ran here);
- ``ray://HOST:10001``: a remote cluster through Ray Client.

A process already connected to Ray (``ray.init`` called before) keeps that connection, whatever
``address`` says. Every node needs pdplanner installed (the same version), as the tasks import
the planner there. Custom models and GPUs given as files travel with the tasks.

Errors: ``RayUnavailableError`` (a ``RuntimeError``) when Ray is not installed
(``pip install 'pdplanner[ray]'``) or the cluster cannot be reached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Final

from pdplanner.planner.catalog import GpuCatalog, GpuSpec, ModelCatalog, ModelSpec
from pdplanner.planner.sweep import ScenarioOutcome, SweepGrid, check_names, run_sweep

#: Chunks per CPU of the cluster: enough to balance uneven scenarios, few enough to keep the
#: per-task overhead (milliseconds) small next to a plan search (tens of milliseconds and up).
CHUNKS_PER_CPU: Final = 4


class RayUnavailableError(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


def _catalogs(
    models: Sequence[ModelSpec], gpus: Sequence[GpuSpec]
) -> tuple[ModelCatalog | None, GpuCatalog | None]:
    from pdplanner.planner.catalog import default_gpus, default_models

    return (
        ModelCatalog(extra=list(models)) if models else default_models(),
        GpuCatalog(extra=list(gpus)) if gpus else default_gpus(),
    )


def run_chunk(
    grid: SweepGrid, indices: Sequence[int], models: Sequence[ModelSpec], gpus: Sequence[GpuSpec]
) -> list[ScenarioOutcome]:
    """The outcomes of the scenarios ``indices`` of ``grid``: what one Ray task runs."""
    wanted = set(indices)
    skip = [i for i in range(len(grid)) if i not in wanted]
    return list(run_sweep(grid, *_catalogs(models, gpus), skip=skip))


def chunks(total: int, cpus: int) -> list[range]:
    """Contiguous index ranges, ``CHUNKS_PER_CPU`` per CPU (fewer when there are few scenarios)."""
    count = max(1, min(total, cpus * CHUNKS_PER_CPU))
    size = math.ceil(total / count) if total else 1
    return [range(start, min(start + size, total)) for start in range(0, total, size)]


def _init(address: str, num_cpus: int | None) -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailableError("Ray is not installed: pip install 'pdplanner[ray]'") from None
    if not ray.is_initialized():
        try:
            if address == "local":
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayUnavailableError(f"cannot reach Ray at {address}: {exc}") from None
    return ray


def ray_sweep(
    grid: SweepGrid,
    address: str = "local",
    *,
    models: Sequence[ModelSpec] = (),
    gpus: Sequence[GpuSpec] = (),
    advance: Callable[[], None] = lambda: None,
    num_cpus: int | None = None,
) -> list[ScenarioOutcome]:
    """Every outcome of ``grid``, in grid order, planned by Ray tasks at ``address``.

    ``models``/``gpus`` are custom entries added to the built-in catalogs (as in process);
    ``advance`` is called once per finished scenario; ``num_cpus`` caps a ``local`` instance.
    Raises ``UnknownEntryError`` before anything is sent for a name no catalog has.
    """
    check_names(grid, *_catalogs(models, gpus))
    ray = _init(address, num_cpus)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    task = ray.remote(num_cpus=1)(run_chunk)
    grid_ref = ray.put(grid)
    pending = [
        task.remote(grid_ref, list(c), list(models), list(gpus)) for c in chunks(len(grid), cpus)
    ]
    outcomes: list[ScenarioOutcome] = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for chunk_outcomes in ray.get(done):
            for outcome in chunk_outcomes:
                outcomes.append(outcome)
                advance()
    return sorted(outcomes, key=lambda o: o.index)

"""What each RPC does, as plain functions of (request, store, catalogs, should_stop).

A handler converts the request (``pdplanner.service.convert``), resolves catalog names against the
built-in and custom catalogs (names only: a caller cannot make the server read a file path), calls
the planner with ``should_stop``, writes to the store once and converts the stored record back. It
raises instead of touching a gRPC context, so a test can call it with a store and a lambda; the
servicer (``pdplanner.service.servicer``) turns what it raises into a status.

Listings page by ``pdplanner.storage.pagetoken``'s token, the one format every listing uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources as package_files
from typing import Any, Final, Generic, TypeVar

from pdplanner import planner
from pdplanner.planner import serialize
from pdplanner.planner.catalog import GpuSpec, ModelSpec, gpu_from_entry, model_from_hf_config
from pdplanner.planner.catalog._catalog import Catalog
from pdplanner.planner.errors import InvalidInputError, SearchCancelled, shorten
from pdplanner.planner.estimate import estimate as run_estimate
from pdplanner.planner.search import plan as run_plan
from pdplanner.planner.sweep import MAX_SWEEP_SCENARIOS, ScenarioOutcome, run_sweep
from pdplanner.planner.types import PlanRequest
from pdplanner.service import convert, errors, metrics, resources
from pdplanner.service.catalogs import CatalogCache, Catalogs
from pdplanner.service.convert.enums import PLAN_VIEW
from pdplanner.service.convert.stored import FRONTIER_KEYS
from pdplanner.storage import pagetoken
from pdplanner.storage.errors import AlreadyExistsError, NotFoundError
from pdplanner.storage.records import StoredEntry, StoredPlan, StoredScenario
from pdplanner.storage.repository import PlanStore
from pdplanner.v1 import catalog_pb2, estimate_pb2, plan_pb2, sweep_pb2

log = logging.getLogger("pdplanner.rpc")

LIST_PLANS_DEFAULT: Final = 50
LIST_PLANS_MAX: Final = 100
LIST_SWEEPS_DEFAULT: Final = 50
LIST_SWEEPS_MAX: Final = 100
#: Scenarios per GetSweep page: a scenario with its Pareto frontiers is up to ~100 kB, so the
#: largest page stays well under the 64 MiB message limit.
GET_SWEEP_DEFAULT: Final = 100
GET_SWEEP_MAX: Final = 500
LIST_CATALOG_DEFAULT: Final = 100
LIST_CATALOG_MAX: Final = 1000

ShouldStop = Callable[[], bool]
Spec = TypeVar("Spec", ModelSpec, GpuSpec)
T = TypeVar("T")


# -- plans ----------------------------------------------------------------------------------------


def plan(
    request: plan_pb2.PlanRequest, store: PlanStore, catalogs: CatalogCache, should_stop: ShouldStop
) -> plan_pb2.PlanResponse:
    """Search, store the answer (once per request_id) and return the stored plan."""
    request_id = convert.request_id(request.request_id)
    req = convert.plan_request_from_proto(request)
    if request_id is not None:
        existing = store.find_plan_by_request_id(request_id)
        if existing is not None:
            return plan_pb2.PlanResponse(plan=_same_plan_request(existing, req))
    current = catalogs.current()
    model, gpu = current.deployment(req.model, req.gpu, req.decode_gpu)
    started = time.perf_counter()
    result = run_plan(req, current.models, current.gpus, should_stop)
    search_ms = (time.perf_counter() - started) * 1e3
    metrics.observe_search("plan", search_ms / 1e3, result.design_points)
    if should_stop():  # finished, but too late to answer: store nothing the caller won't see
        raise SearchCancelled("the call ended before the plan could be stored")
    stored = store.create_plan(
        request_id=request_id,
        model=model.name,
        gpu=gpu.name,
        mode=result.best.mode if result.best is not None else "none",
        planner_version=planner.__version__,
        search_ms=search_ms,
        request=serialize.plan_request_to_json(req),
        result=serialize.plan_result_to_json(result),
    )
    # a concurrent call with the same request_id may have stored its plan first
    return plan_pb2.PlanResponse(plan=_same_plan_request(stored, req))


def _same_plan_request(stored: StoredPlan, req: PlanRequest) -> plan_pb2.Plan:
    """The stored plan of this request_id, if it was stored for this same request."""
    if serialize.plan_request_from_json(stored.request) != req:
        raise errors.invalid_argument(
            "request_id", "was used before by a call with a different request"
        )
    return convert.plan_to_proto(stored)


def estimate(
    request: estimate_pb2.EstimateRequest,
    store: PlanStore,
    catalogs: CatalogCache,
    should_stop: ShouldStop,
) -> estimate_pb2.EstimateResponse:
    """Evaluate one fixed configuration (the planner resolves its names against the call's
    catalogs, together with its other checks); nothing is stored."""
    req = convert.estimate_request_from_proto(request)
    current = catalogs.current()
    return convert.estimate_to_proto(run_estimate(req, current.models, current.gpus))


def _by_name(kind: str, collection: resources.Collection, name: str, act: Callable[[str], T]) -> T:
    """``act`` on the stored resource ``name`` names; NOT_FOUND on ``name`` when there is none."""
    ident = resources.parse(name, collection)
    try:
        return act(ident)
    except NotFoundError:
        raise errors.not_found(kind, ident, field="name") from None


def get_plan(
    request: plan_pb2.GetPlanRequest, store: PlanStore, catalogs: CatalogCache, _: ShouldStop
) -> plan_pb2.GetPlanResponse:
    """One stored plan by name."""
    stored = _by_name("plan", "plans", request.name, store.get_plan)
    return plan_pb2.GetPlanResponse(plan=convert.plan_to_proto(stored))


def list_plans(
    request: plan_pb2.ListPlansRequest, store: PlanStore, catalogs: CatalogCache, _: ShouldStop
) -> plan_pb2.ListPlansResponse:
    """A page of stored plans, newest first; model and GPU filters accept aliases. The basic
    view (the default) leaves out the Pareto frontiers, which the database drops before they are
    read: a page of 50 plans then costs about what one GetPlan does."""
    size = convert.page_size(request.page_size, LIST_PLANS_DEFAULT, LIST_PLANS_MAX)
    model: str | None = None
    gpu: str | None = None
    if request.model or request.gpu:
        current = catalogs.current()
        if request.model:
            spec = current.models.find(request.model)
            model = spec.name if spec is not None else request.model
        if request.gpu:
            gpu_spec = current.gpus.find(request.gpu)
            gpu = gpu_spec.name if gpu_spec is not None else request.gpu
    view = PLAN_VIEW.optional_from_proto(request.view, "view") or "basic"
    plans, token = store.list_plans(
        model=model,
        gpu=gpu,
        page_size=size,
        page_token=request.page_token or None,
        omit_result_keys=FRONTIER_KEYS if view == "basic" else (),
    )
    return plan_pb2.ListPlansResponse(
        plans=[convert.plan_to_proto(p, with_frontiers=view == "full") for p in plans],
        next_page_token=token or "",
    )


def delete_plan(
    request: plan_pb2.DeletePlanRequest, store: PlanStore, catalogs: CatalogCache, _: ShouldStop
) -> plan_pb2.DeletePlanResponse:
    """Delete one stored plan by name."""
    _by_name("plan", "plans", request.name, store.delete_plan)
    return plan_pb2.DeletePlanResponse()


# -- sweeps ---------------------------------------------------------------------------------------


def sweep(
    request: sweep_pb2.SweepRequest,
    store: PlanStore,
    catalogs: CatalogCache,
    should_stop: ShouldStop,
) -> Iterator[sweep_pb2.SweepResponse]:
    """Plan every scenario of the grid, storing and streaming each outcome as it is known.

    A retry with the same request_id replays what is stored and plans only the scenarios
    still missing (a call that died half-way is resumed, not repeated).
    """
    request_id = convert.request_id(request.request_id)
    grid = convert.sweep_grid_from_proto(request)
    total = len(grid)
    if total > MAX_SWEEP_SCENARIOS:
        raise errors.invalid_argument(
            "models",
            f"the grid models x gpu_types x traffic x slos has {total:,} scenarios; "
            f"at most {MAX_SWEEP_SCENARIOS:,} are allowed",
        )
    current = catalogs.current()
    for i, name in enumerate(grid.models):
        current.model(name, f"models[{i}]")
    for i, name in enumerate(grid.gpu_types):
        current.gpu(name, f"gpu_types[{i}]")
    request_dict = convert.sweep_request_to_dict(request)
    created_sweep, created = store.create_sweep(
        request_id=request_id, request=request_dict, total=total
    )
    stored = created_sweep if created else store.get_sweep(created_sweep.id)
    if not created and stored.request != request_dict:
        raise errors.invalid_argument(
            "request_id", "was used before by a call with a different request"
        )
    done = 0
    finished = {s.index for s in stored.scenarios}
    try:  # from here on, a caller that leaves (or any failure) marks the sweep failed
        yield sweep_pb2.SweepResponse(sweep=convert.sweep_to_proto(stored, with_scenarios=False))
        for s in stored.scenarios:
            done += 1
            yield sweep_pb2.SweepResponse(scenario=convert.scenario_to_proto(s))
            yield sweep_pb2.SweepResponse(progress=sweep_pb2.SweepProgress(done=done, total=total))
        for outcome in run_sweep(grid, current.models, current.gpus, should_stop, finished):
            if outcome.result is not None:
                result = outcome.result
                metrics.observe_search("sweep", result.elapsed_ms / 1e3, result.design_points)
            scenario = _store_outcome(store, stored.id, outcome)
            done += 1
            yield sweep_pb2.SweepResponse(scenario=convert.scenario_to_proto(scenario))
            yield sweep_pb2.SweepResponse(progress=sweep_pb2.SweepProgress(done=done, total=total))
    except BaseException:
        if stored.state != "done":  # a replay of a finished sweep leaves it as it was
            _fail_sweep(store, stored.id)
        raise
    store.finish_sweep(stored.id, "done")
    final = dataclasses.replace(store.get_sweep(stored.id), scenarios=())
    yield sweep_pb2.SweepResponse(sweep=convert.sweep_to_proto(final, with_scenarios=False))


def _store_outcome(store: PlanStore, sweep_id: str, outcome: ScenarioOutcome) -> StoredScenario:
    """Store one scenario's outcome (unless a concurrent retry stored it first)."""
    scenario = StoredScenario(
        index=outcome.index,
        scenario=serialize.plan_request_to_json(outcome.request),
        result=None if outcome.result is None else serialize.plan_result_to_json(outcome.result),
        error=None if outcome.error is None else serialize.scenario_error_to_text(outcome.error),
    )
    with contextlib.suppress(AlreadyExistsError):
        store.add_sweep_scenario(
            sweep_id,
            scenario.index,
            scenario=scenario.scenario,
            result=scenario.result,
            error=scenario.error,
        )
    return scenario


def _fail_sweep(store: PlanStore, sweep_id: str) -> None:
    try:
        store.finish_sweep(sweep_id, "failed")
    except Exception:  # the call's own error matters more than this bookkeeping
        log.warning("could not mark sweep %s failed", sweep_id, exc_info=True)


def get_sweep(
    request: sweep_pb2.GetSweepRequest, store: PlanStore, catalogs: CatalogCache, _: ShouldStop
) -> sweep_pb2.GetSweepResponse:
    """One stored sweep with a page of its finished scenarios, in grid order."""
    ident = resources.parse(request.name, "sweeps")
    size = convert.page_size(request.page_size, GET_SWEEP_DEFAULT, GET_SWEEP_MAX)
    listing: dict[str, str | None] = {"listing": f"sweeps/{ident}/scenarios"}
    after = -1
    if request.page_token:
        position = pagetoken.decode(request.page_token, listing).id
        if not position.isdigit() or len(position) > 9:
            raise errors.invalid_argument("page_token", "was not issued for this listing")
        after = int(position)
    try:
        stored = store.get_sweep(ident, after_index=after, limit=size + 1)
    except NotFoundError:
        raise errors.not_found("sweep", ident, field="name") from None
    page = stored.scenarios[:size]
    token = ""
    if len(stored.scenarios) > size:
        token = pagetoken.encode(pagetoken.Cursor(_NAME_KEYED, str(page[-1].index)), listing)
    shown = dataclasses.replace(stored, scenarios=page)
    return sweep_pb2.GetSweepResponse(sweep=convert.sweep_to_proto(shown), next_page_token=token)


def list_sweeps(
    request: sweep_pb2.ListSweepsRequest, store: PlanStore, catalogs: CatalogCache, _: ShouldStop
) -> sweep_pb2.ListSweepsResponse:
    """A page of stored sweeps, newest first, without their scenarios."""
    size = convert.page_size(request.page_size, LIST_SWEEPS_DEFAULT, LIST_SWEEPS_MAX)
    sweeps, token = store.list_sweeps(page_size=size, page_token=request.page_token or None)
    return sweep_pb2.ListSweepsResponse(
        sweeps=[convert.sweep_to_proto(s, with_scenarios=False) for s in sweeps],
        next_page_token=token or "",
    )


# -- catalogs: one table drives the listing and creation of models and GPUs -----------------------


@dataclass(frozen=True)
class CatalogKind(Generic[Spec]):
    """How one kind of catalog entry is listed, stored and shown."""

    kind: str  # as errors name it: "model", "GPU"
    collection: resources.Collection
    entries: Callable[[Catalogs], Catalog[Spec]]
    custom: Callable[[Catalogs], frozenset[str]]
    to_proto: Callable[[Spec, bool], Any]
    get_stored: Callable[[PlanStore, str], StoredEntry]
    create_stored: Callable[[PlanStore, str, dict[str, Any]], StoredEntry]
    from_stored: Callable[[StoredEntry], Spec]


MODELS: Final = CatalogKind[ModelSpec](
    kind="model",
    collection="models",
    entries=lambda c: c.models,
    custom=lambda c: c.custom_models,
    to_proto=lambda spec, custom: convert.model_to_proto(spec, custom=custom),
    get_stored=lambda store, name: store.get_custom_model(name),
    create_stored=lambda store, name, record: store.create_custom_model(name, record),
    from_stored=lambda e: convert.custom_model_from_record(e.name, e.spec),
)
GPUS: Final = CatalogKind[GpuSpec](
    kind="GPU",
    collection="gpus",
    entries=lambda c: c.gpus,
    custom=lambda c: c.custom_gpus,
    to_proto=lambda spec, custom: convert.gpu_to_proto(spec, custom=custom),
    get_stored=lambda store, name: store.get_custom_gpu(name),
    create_stored=lambda store, name, record: store.create_custom_gpu(name, record),
    from_stored=lambda e: convert.custom_gpu_from_record(e.spec),
)

#: A catalog page token's position: entries are keyed by name, so the time is a constant.
_NAME_KEYED: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _list_entries(
    table: CatalogKind[Spec], page_size: int, page_token: str, catalogs: CatalogCache
) -> tuple[list[Any], str]:
    """One page of the catalog, by name, and the next page's token ('' on the last page)."""
    size = convert.page_size(page_size, LIST_CATALOG_DEFAULT, LIST_CATALOG_MAX)
    listing: dict[str, str | None] = {"listing": table.collection}
    after = pagetoken.decode(page_token, listing).id if page_token else None
    current = catalogs.current()
    rest = [n for n in table.entries(current).names() if after is None or n > after]
    page = rest[:size]
    token = ""
    if len(rest) > size:
        token = pagetoken.encode(pagetoken.Cursor(_NAME_KEYED, page[-1]), listing)
    custom = table.custom(current)
    entries = table.entries(current)
    return [table.to_proto(entries.get(n, "page_token"), n in custom) for n in page], token


def _create_entry(
    table: CatalogKind[Spec],
    entry_id: str,
    aliases: Sequence[str],
    record: dict[str, Any],
    store: PlanStore,
    catalogs: CatalogCache,
) -> Any:
    """Store a custom entry once; a retry (same request_id and content) gets the stored one."""
    try:
        stored = table.get_stored(store, entry_id)
    except NotFoundError:
        current = catalogs.current()
        if len(table.custom(current)) >= MAX_CUSTOM_ENTRIES:
            raise errors.resource_exhausted(
                f"the catalog holds {MAX_CUSTOM_ENTRIES} custom {table.collection}, the most "
                "allowed; delete one first"
            ) from None
        entries = table.entries(current)
        for key in (entry_id, *aliases):
            if entries.find(key) is not None:
                raise errors.already_exists(
                    table.kind, entry_id, f"{key!r} already names a {table.kind} in the catalog"
                ) from None
        try:
            stored = table.create_stored(store, entry_id, record)
        except AlreadyExistsError:  # a concurrent call took the name first
            stored = table.get_stored(store, entry_id)
            _check_retry(stored, record, table.kind, entry_id)
    else:
        _check_retry(stored, record, table.kind, entry_id)
    return table.to_proto(table.from_stored(stored), True)


def _check_retry(stored: StoredEntry, record: dict[str, Any], kind: str, name: str) -> None:
    """Accept a stored entry as this call's own (a retry) only if request_id and content match."""
    same_call = record["request_id"] is not None and (
        stored.spec.get("request_id") == record["request_id"]
    )
    if not same_call or stored.spec != record:
        raise errors.already_exists(kind, name, f"{kind} {name!r} already exists")


def _delete_entry(
    table: CatalogKind[Spec],
    name: str,
    delete: Callable[[str], None],
    catalogs: CatalogCache,
) -> None:
    """Delete a custom entry by resource name; built-in entries cannot be deleted."""
    ident = resources.parse(name, table.collection)
    try:
        delete(ident)
    except NotFoundError:
        if table.entries(catalogs.current()).find(ident) is not None:
            raise errors.failed_precondition(
                f"{table.kind} {table.collection}/{ident} is built in; only custom entries can "
                "be deleted"
            ) from None
        raise errors.not_found(table.kind, ident, field="name") from None
    catalogs.invalidate()


def delete_model(
    request: catalog_pb2.DeleteModelRequest,
    store: PlanStore,
    catalogs: CatalogCache,
    _: ShouldStop,
) -> catalog_pb2.DeleteModelResponse:
    """Delete one custom model; plans made with it keep their stored copy."""
    _delete_entry(MODELS, request.name, store.delete_custom_model, catalogs)
    return catalog_pb2.DeleteModelResponse()


def delete_gpu(
    request: catalog_pb2.DeleteGpuRequest, store: PlanStore, catalogs: CatalogCache, _: ShouldStop
) -> catalog_pb2.DeleteGpuResponse:
    """Delete one custom GPU type; plans made with it keep their stored copy."""
    _delete_entry(GPUS, request.name, store.delete_custom_gpu, catalogs)
    return catalog_pb2.DeleteGpuResponse()


def list_models(
    request: catalog_pb2.ListModelsRequest, store: PlanStore, catalogs: CatalogCache, _: ShouldStop
) -> catalog_pb2.ListModelsResponse:
    """The model catalog, built-in and custom, by name."""
    models, token = _list_entries(MODELS, request.page_size, request.page_token, catalogs)
    return catalog_pb2.ListModelsResponse(models=models, next_page_token=token)


def list_gpus(
    request: catalog_pb2.ListGpusRequest, store: PlanStore, catalogs: CatalogCache, _: ShouldStop
) -> catalog_pb2.ListGpusResponse:
    """The GPU catalog, built-in and custom, by name."""
    gpus, token = _list_entries(GPUS, request.page_size, request.page_token, catalogs)
    return catalog_pb2.ListGpusResponse(gpus=gpus, next_page_token=token)


def create_model(
    request: catalog_pb2.CreateModelRequest,
    store: PlanStore,
    catalogs: CatalogCache,
    _: ShouldStop,
) -> catalog_pb2.CreateModelResponse:
    """Add a custom model from its Hugging Face config.json."""
    request_id = convert.request_id(request.request_id)
    model_id = convert.catalog_id(request.model_id, "model_id")
    config, path = _hf_config(request)
    aliases = _aliases(request.aliases)
    model_from_hf_config(config, model_id, path)  # the checks, naming e.g. config.hidden_size
    record = convert.custom_model_record(config, aliases, request_id)
    model = _create_entry(MODELS, model_id, aliases, record, store, catalogs)
    return catalog_pb2.CreateModelResponse(model=model)


def create_gpu(
    request: catalog_pb2.CreateGpuRequest, store: PlanStore, catalogs: CatalogCache, _: ShouldStop
) -> catalog_pb2.CreateGpuResponse:
    """Add a custom GPU type."""
    request_id = convert.request_id(request.request_id)
    gpu_id = convert.catalog_id(request.gpu_id, "gpu_id")
    if not request.HasField("gpu"):
        raise errors.invalid_argument("gpu", "is required: the GPU's figures")
    entry = convert.gpu_entry_from_proto(request.gpu, gpu_id)
    entry["aliases"] = list(_aliases(request.gpu.aliases, "gpu.aliases"))
    spec = gpu_from_entry(entry, "gpu")
    if not _calibration_exists(spec.calibration):
        raise errors.invalid_argument(
            "gpu.calibration",
            f"no calibration tables named {shorten(spec.calibration)}; "
            f"known: {', '.join(sorted(_calibration_names()))}",
        )
    record = convert.custom_gpu_record(spec, request_id)
    gpu = _create_entry(GPUS, gpu_id, spec.aliases, record, store, catalogs)
    return catalog_pb2.CreateGpuResponse(gpu=gpu)


def _hf_config(request: catalog_pb2.CreateModelRequest) -> tuple[dict[str, Any], str]:
    """The config.json of a CreateModel request, and the field it came from."""
    source = request.WhichOneof("config_source")
    if source == "config_json":
        try:
            config = json.loads(request.config_json, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise errors.invalid_argument("config_json", f"is not valid JSON: {exc}") from None
        except RecursionError:
            raise errors.invalid_argument(
                "config_json", f"nests deeper than {MAX_CONFIG_DEPTH} levels"
            ) from None
        if not isinstance(config, dict):
            raise errors.invalid_argument("config_json", "must hold a JSON object")
        _check_config_values(config, "config_json", 0)
        return config, "config_json"
    if source == "config":
        config = convert.struct_to_dict(request.config)
        _check_config_values(config, "config", 0)
        return config, "config"
    raise errors.invalid_argument("config", "is required: config_json or config")


#: How deep a config.json may nest (real ones nest 3 levels: rope_scaling, quantization_config).
MAX_CONFIG_DEPTH: Final = 32


def _no_constant(name: str) -> Any:
    raise errors.invalid_argument("config_json", f"holds {name}: every number must be finite")


def _check_config_values(value: Any, path: str, depth: int) -> None:
    """Every number of a stored config is finite (no database stores NaN in JSON) and it nests
    at most ``MAX_CONFIG_DEPTH`` levels."""
    if depth > MAX_CONFIG_DEPTH:
        raise errors.invalid_argument(path, f"nests deeper than {MAX_CONFIG_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise errors.invalid_argument(path, f"must be a finite number, got {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_config_values(item, f"{path}.{str(key)[:60]}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_config_values(item, f"{path}[{i}]", depth + 1)


#: The most custom models (and, apart, custom GPUs) the catalog holds: every call's catalog is
#: built from them, so their number bounds the work of every call.
MAX_CUSTOM_ENTRIES: Final = 256
#: The most aliases one catalog entry may have (the built-in entries have up to 4).
MAX_ALIASES: Final = 16


def _aliases(values: Sequence[str], field: str = "aliases") -> tuple[str, ...]:
    if len(values) > MAX_ALIASES:
        raise InvalidInputError(field, f"must have at most {MAX_ALIASES} values, got {len(values)}")
    out: list[str] = []
    for i, alias in enumerate(values):
        if not alias.strip():
            raise InvalidInputError(f"{field}[{i}]", "must not be empty")
        if len(alias) > 200:
            raise InvalidInputError(f"{field}[{i}]", "must be at most 200 characters")
        if alias not in out:
            out.append(alias)
    return tuple(out)


def _calibration_names() -> frozenset[str]:
    """The measured calibration tables the package ships: a custom GPU may name only these."""
    data = package_files.files("pdplanner.planner.perf").joinpath("data")
    return frozenset(
        d.name for d in data.iterdir() if d.is_dir() and d.joinpath("meta.csv").is_file()
    )


def _calibration_exists(name: str) -> bool:
    return name in _calibration_names()

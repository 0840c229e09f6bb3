"""The ``PlannerService`` servicer: convert the request, call the planner, store, convert back.

Nothing here computes anything. Each method follows the same steps: proto-level checks and
conversion (``service.convert``), catalog names resolved against the built-in and custom catalogs
(catalog names only: a remote caller cannot make the server read a file path), the planner call
with a ``should_stop`` that watches the call's deadline, one storage write, and the stored record
converted back. Every exception that escapes a method is turned into a status once, by the
``_unary``/``_stream`` wrappers (``service.errors.status_for``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, TypeVar

import grpc
from pdplanner.v1 import (
    catalog_pb2,
    estimate_pb2,
    plan_pb2,
    planner_service_pb2_grpc,
    sweep_pb2,
)

import planner
from planner.catalog import (
    GpuCatalog,
    GpuSpec,
    ModelCatalog,
    ModelSpec,
    gpu_from_entry,
    model_from_hf_config,
)
from planner.errors import InvalidInputError, SearchCancelled, UnknownEntryError
from planner.estimate import estimate as run_estimate
from planner.search import plan as run_plan
from planner.types import PlanRequest, PlanResult
from service import convert, errors
from service.settings import ServerSettings
from storage.errors import AlreadyExistsError, NotFoundError
from storage.records import StoredEntry, StoredPlan
from storage.repository import PlanStore

log = logging.getLogger("pdplanner.rpc")

LIST_PLANS_DEFAULT: Final = 50
LIST_PLANS_MAX: Final = 100
LIST_CATALOG_DEFAULT: Final = 100
LIST_CATALOG_MAX: Final = 1000
#: The most scenarios one Sweep may hold (a paper-scale sweep is 4 x 4 x 8 x 5 = 640).
MAX_SWEEP_SCENARIOS: Final = 10_000

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Servicer = TypeVar("Servicer", bound="PlannerServicer")


# -- catalogs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalogs:
    """The built-in catalogs plus the stored custom entries, with name-only look-ups."""

    models: ModelCatalog
    gpus: GpuCatalog
    custom_models: frozenset[str]
    custom_gpus: frozenset[str]

    @classmethod
    def build(cls, models: Sequence[ModelSpec], gpus: Sequence[GpuSpec]) -> Catalogs:
        model_catalog = ModelCatalog(extra=list(models))
        gpu_catalog = GpuCatalog(extra=list(gpus))
        return cls(
            models=model_catalog,
            gpus=gpu_catalog,
            custom_models=frozenset(m.name for m in models),
            custom_gpus=frozenset(g.name for g in gpus),
        )

    def find_model(self, name: str) -> ModelSpec | None:
        return self.models.find(name)

    def find_gpu(self, name: str) -> GpuSpec | None:
        return self.gpus.find(name)

    def model(self, name: str, field: str) -> ModelSpec:
        """The model named ``name`` (or an alias); ``UnknownEntryError`` on ``field`` otherwise."""
        spec = self.find_model(name)
        if spec is None:
            raise UnknownEntryError(field, "model", name, self.models.names())
        return spec

    def gpu(self, name: str, field: str) -> GpuSpec:
        """The GPU named ``name`` (or an alias); ``UnknownEntryError`` on ``field`` otherwise."""
        spec = self.find_gpu(name)
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


# -- error handling wrappers ----------------------------------------------------------------------


def _deadline_passed(servicer: PlannerServicer, context: grpc.ServicerContext) -> bool:
    """Whether the call's deadline is (about to be) over: a stop then is DEADLINE_EXCEEDED."""
    remaining = context.time_remaining()
    return remaining is not None and remaining < servicer.deadline_margin_s


def _unary(
    method: Callable[[Servicer, Req, grpc.ServicerContext], Resp],
) -> Callable[[Servicer, Req, grpc.ServicerContext], Resp]:
    """End the call with the status of any exception the method raises."""

    @functools.wraps(method)
    def wrapper(self: Servicer, request: Req, context: grpc.ServicerContext) -> Resp:
        try:
            return method(self, request, context)
        except Exception as exc:  # every failure ends the call with a status, none the server
            context.abort_with_status(
                errors.status_for(exc, deadline_passed=_deadline_passed(self, context))
            )
            raise  # not reached: abort_with_status raises

    return wrapper


def _stream(
    method: Callable[[Servicer, Req, grpc.ServicerContext], Iterator[Resp]],
) -> Callable[[Servicer, Req, grpc.ServicerContext], Iterator[Resp]]:
    """As ``_unary``, for a server-streaming method."""

    @functools.wraps(method)
    def wrapper(self: Servicer, request: Req, context: grpc.ServicerContext) -> Iterator[Resp]:
        try:
            yield from method(self, request, context)
        except Exception as exc:
            context.abort_with_status(
                errors.status_for(exc, deadline_passed=_deadline_passed(self, context))
            )
            raise

    return wrapper


# -- page tokens of the catalog listings ---------------------------------------------------------


def _catalog_token(last_name: str) -> str:
    raw = json.dumps({"after": last_name}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _catalog_after(token: str) -> str | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        after = json.loads(raw)["after"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise errors.invalid_argument("page_token", "was not issued by this listing") from None
    if not isinstance(after, str):
        raise errors.invalid_argument("page_token", "was not issued by this listing")
    return after


def _page(names: list[str], size: int, token: str) -> tuple[list[str], str]:
    """One page of sorted ``names`` after the token's name, and the next token ('' at the end)."""
    after = _catalog_after(token)
    rest = [n for n in names if after is None or n > after]
    page = rest[:size]
    return page, _catalog_token(page[-1]) if len(rest) > size else ""


# -- the servicer ---------------------------------------------------------------------------------


class PlannerServicer(planner_service_pb2_grpc.PlannerServiceServicer):
    """``pdplanner.v1.PlannerService`` over the planner and a ``PlanStore``.

    Calls before ``ready`` is set (kernels compiling, migrations running) fail with UNAVAILABLE.
    """

    def __init__(self, store: PlanStore, settings: ServerSettings) -> None:
        self._store = store
        self._settings = settings
        self._catalogs = CatalogCache(store)
        self.ready = threading.Event()
        self.deadline_margin_s = settings.deadline_margin_s

    # -- helpers ---------------------------------------------------------------------------------

    def _check_ready(self) -> None:
        if not self.ready.is_set():
            raise errors.unavailable("the server is starting (compiling the planner's kernels)")

    def _should_stop(self, context: grpc.ServicerContext) -> Callable[[], bool]:
        """True once the client is gone or too little of the deadline is left to answer in."""
        margin = self.deadline_margin_s

        def stop() -> bool:
            if not context.is_active():
                return True
            remaining = context.time_remaining()
            return remaining is not None and remaining < margin

        return stop

    def _resolve_plan_names(self, req: PlanRequest, catalogs: Catalogs) -> tuple[str, str]:
        """Check the request's catalog names; return the canonical model and GPU names."""
        model = catalogs.model(req.model, "model")
        gpu = catalogs.gpu(req.gpu, "gpu")
        if req.decode_gpu is not None:
            catalogs.gpu(req.decode_gpu, "decode_gpu")
        return model.name, gpu.name

    # -- plans -----------------------------------------------------------------------------------

    @_unary
    def Plan(
        self, request: plan_pb2.PlanRequest, context: grpc.ServicerContext
    ) -> plan_pb2.PlanResponse:
        """Search, store the answer (once per request_id) and return the stored plan."""
        self._check_ready()
        request_id = convert.request_id(request.request_id)
        req = convert.plan_request_from_proto(request)
        if request_id is not None:
            existing = self._store.find_plan_by_request_id(request_id)
            if existing is not None:
                return plan_pb2.PlanResponse(plan=_same_plan_request(existing, req))
        catalogs = self._catalogs.current()
        model, gpu = self._resolve_plan_names(req, catalogs)
        should_stop = self._should_stop(context)
        started = time.perf_counter()
        result = run_plan(req, catalogs.models, catalogs.gpus, should_stop)
        search_ms = (time.perf_counter() - started) * 1e3
        if should_stop():  # finished, but too late to answer: store nothing the caller won't see
            raise SearchCancelled("the call ended before the plan could be stored")
        stored = self._store.create_plan(
            request_id=request_id,
            model=model,
            gpu=gpu,
            mode=result.best.mode if result.best is not None else "none",
            planner_version=planner.__version__,
            search_ms=search_ms,
            request=convert.plan_request_to_dict(req),
            result=result.to_dict(),
        )
        # a concurrent call with the same request_id may have stored its plan first
        return plan_pb2.PlanResponse(plan=_same_plan_request(stored, req))

    @_unary
    def Estimate(
        self, request: estimate_pb2.EstimateRequest, context: grpc.ServicerContext
    ) -> estimate_pb2.EstimateResponse:
        """Evaluate one fixed configuration; nothing is stored."""
        self._check_ready()
        req = convert.estimate_request_from_proto(request)
        catalogs = self._catalogs.current()
        catalogs.model(req.model, "model")
        catalogs.gpu(req.gpu, "gpu")
        for role, pool in (("prefill", req.prefill), ("decode", req.decode)):
            if pool is not None and pool.gpu is not None:
                catalogs.gpu(pool.gpu, f"{role}.gpu")
        return convert.estimate_to_proto(run_estimate(req, catalogs.models, catalogs.gpus))

    @_unary
    def GetPlan(
        self, request: plan_pb2.GetPlanRequest, context: grpc.ServicerContext
    ) -> plan_pb2.GetPlanResponse:
        """One stored plan by name."""
        self._check_ready()
        plan_id = convert.parse_name(request.name, "plans")
        try:
            stored = self._store.get_plan(plan_id)
        except NotFoundError:
            raise errors.not_found("plan", plan_id, field="name") from None
        return plan_pb2.GetPlanResponse(plan=convert.plan_to_proto(stored))

    @_unary
    def ListPlans(
        self, request: plan_pb2.ListPlansRequest, context: grpc.ServicerContext
    ) -> plan_pb2.ListPlansResponse:
        """A page of stored plans, newest first; model and GPU filters accept aliases."""
        self._check_ready()
        size = convert.page_size(request.page_size, LIST_PLANS_DEFAULT, LIST_PLANS_MAX)
        model: str | None = None
        gpu: str | None = None
        if request.model or request.gpu:
            catalogs = self._catalogs.current()
            if request.model:
                spec = catalogs.find_model(request.model)
                model = spec.name if spec is not None else request.model
            if request.gpu:
                gpu_spec = catalogs.find_gpu(request.gpu)
                gpu = gpu_spec.name if gpu_spec is not None else request.gpu
        plans, token = self._store.list_plans(
            model=model, gpu=gpu, page_size=size, page_token=request.page_token or None
        )
        return plan_pb2.ListPlansResponse(
            plans=[convert.plan_to_proto(p) for p in plans], next_page_token=token or ""
        )

    @_unary
    def DeletePlan(
        self, request: plan_pb2.DeletePlanRequest, context: grpc.ServicerContext
    ) -> plan_pb2.DeletePlanResponse:
        """Delete one stored plan by name."""
        self._check_ready()
        plan_id = convert.parse_name(request.name, "plans")
        try:
            self._store.delete_plan(plan_id)
        except NotFoundError:
            raise errors.not_found("plan", plan_id, field="name") from None
        return plan_pb2.DeletePlanResponse()

    # -- sweeps ----------------------------------------------------------------------------------

    @_stream
    def Sweep(
        self, request: sweep_pb2.SweepRequest, context: grpc.ServicerContext
    ) -> Iterator[sweep_pb2.SweepResponse]:
        """Plan every scenario of the grid, storing and streaming each outcome as it is known.

        A retry with the same request_id replays what is stored and plans only the scenarios
        still missing (a call that died half-way is resumed, not repeated).
        """
        self._check_ready()
        request_id = convert.request_id(request.request_id)
        scenarios = convert.sweep_scenarios_from_proto(request)
        shape = (len(request.models), len(request.gpu_types), len(request.traffic),
                 len(request.slos))  # fmt: skip
        if len(scenarios) > MAX_SWEEP_SCENARIOS:
            raise errors.invalid_argument(
                "models",
                f"the grid models x gpu_types x traffic x slos has {len(scenarios):,} scenarios; "
                f"at most {MAX_SWEEP_SCENARIOS:,} are allowed",
            )
        catalogs = self._catalogs.current()
        for i, name in enumerate(request.models):
            catalogs.model(name, f"models[{i}]")
        for i, name in enumerate(request.gpu_types):
            catalogs.gpu(name, f"gpu_types[{i}]")
        request_dict = convert.sweep_request_to_dict(request)
        sweep, created = self._store.create_sweep(
            request_id=request_id, request=request_dict, total=len(scenarios)
        )
        stored = sweep if created else self._store.get_sweep(sweep.id)
        if not created and stored.request != request_dict:
            raise errors.invalid_argument(
                "request_id", "was used before by a call with a different request"
            )
        yield sweep_pb2.SweepResponse(sweep=convert.sweep_to_proto(stored, with_scenarios=False))
        total = len(scenarios)
        done = 0
        for s in stored.scenarios:
            done += 1
            yield sweep_pb2.SweepResponse(
                scenario=convert.scenario_to_proto(s.index, s.scenario, s.result, s.error)
            )
            yield sweep_pb2.SweepResponse(progress=sweep_pb2.SweepProgress(done=done, total=total))
        finished = {s.index for s in stored.scenarios}
        should_stop = self._should_stop(context)
        try:
            for index, scenario in enumerate(scenarios):
                if index in finished:
                    continue
                if should_stop():
                    raise SearchCancelled("sweep stopped by its caller")
                outcome = self._sweep_scenario(sweep.id, index, scenario, shape, catalogs, context)
                done += 1
                yield sweep_pb2.SweepResponse(scenario=outcome)
                yield sweep_pb2.SweepResponse(
                    progress=sweep_pb2.SweepProgress(done=done, total=total)
                )
        except BaseException:
            self._fail_sweep(sweep.id)
            raise
        self._store.finish_sweep(sweep.id, "done")
        final = dataclasses.replace(self._store.get_sweep(sweep.id), scenarios=())
        yield sweep_pb2.SweepResponse(sweep=convert.sweep_to_proto(final, with_scenarios=False))

    def _sweep_scenario(
        self,
        sweep_id: str,
        index: int,
        scenario: PlanRequest,
        shape: tuple[int, int, int, int],
        catalogs: Catalogs,
        context: grpc.ServicerContext,
    ) -> sweep_pb2.SweepScenarioResult:
        """Plan one scenario and store its outcome (an invalid one gets an error, no result)."""
        result: PlanResult | None = None
        error: str | None = None
        try:
            result = run_plan(scenario, catalogs.models, catalogs.gpus, self._should_stop(context))
        except InvalidInputError as exc:
            error = f"{convert.sweep_field(exc.field, index, shape)}: {exc.reason}"
        scenario_dict = convert.plan_request_to_dict(scenario)
        result_dict = result.to_dict() if result is not None else None
        with contextlib.suppress(AlreadyExistsError):  # a concurrent retry stored it first
            self._store.add_sweep_scenario(
                sweep_id, index, scenario=scenario_dict, result=result_dict, error=error
            )
        return convert.scenario_to_proto(index, scenario_dict, result_dict, error)

    def _fail_sweep(self, sweep_id: str) -> None:
        try:
            self._store.finish_sweep(sweep_id, "failed")
        except Exception:  # the call's own error matters more than this bookkeeping
            log.warning("could not mark sweep %s failed", sweep_id, exc_info=True)

    @_unary
    def GetSweep(
        self, request: sweep_pb2.GetSweepRequest, context: grpc.ServicerContext
    ) -> sweep_pb2.GetSweepResponse:
        """One stored sweep with every finished scenario."""
        self._check_ready()
        sweep_id = convert.parse_name(request.name, "sweeps")
        try:
            stored = self._store.get_sweep(sweep_id)
        except NotFoundError:
            raise errors.not_found("sweep", sweep_id, field="name") from None
        return sweep_pb2.GetSweepResponse(sweep=convert.sweep_to_proto(stored))

    # -- catalogs --------------------------------------------------------------------------------

    @_unary
    def ListModels(
        self, request: catalog_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.ListModelsResponse:
        """The model catalog, built-in and custom, by name."""
        self._check_ready()
        size = convert.page_size(request.page_size, LIST_CATALOG_DEFAULT, LIST_CATALOG_MAX)
        catalogs = self._catalogs.current()
        names, token = _page(catalogs.models.names(), size, request.page_token)
        models = [
            convert.model_to_proto(catalogs.model(n, "name"), custom=n in catalogs.custom_models)
            for n in names
        ]
        return catalog_pb2.ListModelsResponse(models=models, next_page_token=token)

    @_unary
    def ListGpus(
        self, request: catalog_pb2.ListGpusRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.ListGpusResponse:
        """The GPU catalog, built-in and custom, by name."""
        self._check_ready()
        size = convert.page_size(request.page_size, LIST_CATALOG_DEFAULT, LIST_CATALOG_MAX)
        catalogs = self._catalogs.current()
        names, token = _page(catalogs.gpus.names(), size, request.page_token)
        gpus = [
            convert.gpu_to_proto(catalogs.gpu(n, "name"), custom=n in catalogs.custom_gpus)
            for n in names
        ]
        return catalog_pb2.ListGpusResponse(gpus=gpus, next_page_token=token)

    @_unary
    def CreateModel(
        self, request: catalog_pb2.CreateModelRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.CreateModelResponse:
        """Add a custom model from its Hugging Face config.json."""
        self._check_ready()
        request_id = convert.request_id(request.request_id)
        model_id = convert.catalog_id(request.model_id, "model_id")
        config, path = _hf_config(request)
        aliases = _aliases(request.aliases)
        model_from_hf_config(config, model_id, path)  # the checks, naming e.g. config.hidden_size
        record = convert.custom_model_record(config, aliases, request_id)
        catalogs = self._catalogs.current()
        try:
            stored = self._store.get_custom_model(model_id)
        except NotFoundError:
            _check_free(model_id, aliases, catalogs.find_model, "model")
            try:
                stored = self._store.create_custom_model(model_id, record)
            except AlreadyExistsError:  # a concurrent call took the name first
                stored = self._store.get_custom_model(model_id)
                _check_retry(stored, record, "model", model_id)
        else:
            _check_retry(stored, record, "model", model_id)
        created = convert.custom_model_from_record(stored.name, stored.spec)
        return catalog_pb2.CreateModelResponse(model=convert.model_to_proto(created, custom=True))

    @_unary
    def CreateGpu(
        self, request: catalog_pb2.CreateGpuRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.CreateGpuResponse:
        """Add a custom GPU type."""
        self._check_ready()
        request_id = convert.request_id(request.request_id)
        gpu_id = convert.catalog_id(request.gpu_id, "gpu_id")
        if not request.HasField("gpu"):
            raise errors.invalid_argument("gpu", "is required: the GPU's figures")
        entry = convert.gpu_entry_from_proto(request.gpu, gpu_id)
        entry["aliases"] = list(_aliases(request.gpu.aliases, "gpu.aliases"))
        spec = gpu_from_entry(entry, "gpu")
        if not _calibration_exists(spec.calibration):
            raise errors.invalid_argument(
                "gpu.calibration", f"no calibration tables named {spec.calibration!r}"
            )
        record = convert.custom_gpu_record(spec, request_id)
        catalogs = self._catalogs.current()
        try:
            stored = self._store.get_custom_gpu(gpu_id)
        except NotFoundError:
            _check_free(gpu_id, spec.aliases, catalogs.find_gpu, "GPU")
            try:
                stored = self._store.create_custom_gpu(gpu_id, record)
            except AlreadyExistsError:
                stored = self._store.get_custom_gpu(gpu_id)
                _check_retry(stored, record, "GPU", gpu_id)
        else:
            _check_retry(stored, record, "GPU", gpu_id)
        created = convert.custom_gpu_from_record(stored.spec)
        return catalog_pb2.CreateGpuResponse(gpu=convert.gpu_to_proto(created, custom=True))


# -- helpers of the mutating calls ----------------------------------------------------------------


def _same_plan_request(stored: StoredPlan, req: PlanRequest) -> plan_pb2.Plan:
    """The stored plan of this request_id, if it was stored for this same request."""
    if convert.plan_request_from_dict(stored.request) != req:
        raise errors.invalid_argument(
            "request_id", "was used before by a call with a different request"
        )
    return convert.plan_to_proto(stored)


def _hf_config(request: catalog_pb2.CreateModelRequest) -> tuple[dict[str, Any], str]:
    """The config.json of a CreateModel request, and the field it came from."""
    source = request.WhichOneof("config_source")
    if source == "config_json":
        try:
            config = json.loads(request.config_json)
        except json.JSONDecodeError as exc:
            raise errors.invalid_argument("config_json", f"is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise errors.invalid_argument("config_json", "must hold a JSON object")
        return config, "config_json"
    if source == "config":
        return convert.struct_to_dict(request.config), "config"
    raise errors.invalid_argument("config", "is required: config_json or config")


def _aliases(values: Sequence[str], field: str = "aliases") -> tuple[str, ...]:
    out: list[str] = []
    for i, alias in enumerate(values):
        if not alias.strip():
            raise InvalidInputError(f"{field}[{i}]", "must not be empty")
        if len(alias) > 200:
            raise InvalidInputError(f"{field}[{i}]", "must be at most 200 characters")
        if alias not in out:
            out.append(alias)
    return tuple(out)


def _check_free(
    name: str, aliases: Sequence[str], find: Callable[[str], object | None], kind: str
) -> None:
    """ALREADY_EXISTS when the name or an alias already means a catalog entry."""
    for key in (name, *aliases):
        if find(key) is not None:
            raise errors.already_exists(
                kind, name, f"{key!r} already names a {kind} in the catalog"
            )


def _check_retry(stored: StoredEntry, record: dict[str, Any], kind: str, name: str) -> None:
    """Accept a stored entry as this call's own (a retry) only if request_id and content match."""
    same_call = (
        record["request_id"] is not None and stored.spec.get("request_id") == (record["request_id"])
    )
    if not same_call or stored.spec != record:
        raise errors.already_exists(kind, name, f"{kind} {name!r} already exists")


def _calibration_exists(name: str) -> bool:
    try:
        return resources.files("planner.perf").joinpath("data", name, "meta.csv").is_file()
    except (OSError, ValueError):
        return False

"""Where a command runs: in this process (``LocalBackend``) or on a server (``RemoteBackend``).

``backend(server)`` chooses once, from ``--server`` (or ``PDPLANNER_SERVER``); the commands call
the same methods either way and print the same output. A model or GPU given as a file is an
explicit step here at the edge: ``use_model``/``use_gpu`` read it and make it known (in process:
added to this run's catalogs; on a server: registered with CreateModel/CreateGpu, idempotently,
under a request_id derived from the file's content) and return the name the request then uses.

The server's errors come back as the in-process ones would: a bad field (``INVALID_ARGUMENT``, or
an unknown catalog name) as ``InvalidInputError`` on its field path, which the command names as
its flag; anything else as a one-line ``CliError``. The client retries UNAVAILABLE with backoff and
gives mutating calls a request_id, so a retried plan or sweep is neither searched nor stored twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from pdplanner.planner.catalog import GpuCatalog, GpuSpec, ModelCatalog, ModelSpec
from pdplanner.planner.catalog._catalog import is_file_name
from pdplanner.planner.catalog.models import is_model_path
from pdplanner.planner.errors import InvalidFields, InvalidInputError
from pdplanner.planner.sweep import ScenarioError, ScenarioOutcome, SweepGrid
from pdplanner.planner.types import (
    EstimateRequest,
    PhaseEstimate,
    PlanRequest,
    PlanResult,
    ServingEstimate,
)
from pdplanner.service import resources
from pdplanner.service.cli.errors import EXIT_FAILURE, EXIT_USAGE, CliError
from pdplanner.service.cli.format import StoredPlan

if TYPE_CHECKING:
    from pdplanner.client import PlannerClient
    from pdplanner.planner.export import PlanExport
    from pdplanner.planner.scaling.forecast import ForecastSpec
    from pdplanner.planner.scaling.schedule import ScheduleRequest

SERVER_ENV = "PDPLANNER_SERVER"
#: Seconds a call may take before the CLI gives up on it (all retries included).
CALL_TIMEOUT_S = 600.0
#: Seconds a whole sweep may stream.
SWEEP_TIMEOUT_S = 24 * 3600.0


class Backend(Protocol):
    """What the commands ask of the planner, wherever it runs."""

    server: str | None  # the server's HOST:PORT, None in process

    def use_model(self, name_or_path: str, field: str = "model") -> str:
        """The catalog name to request for a model name or a model file (read and registered)."""
        ...

    def use_gpu(self, name_or_path: str, field: str = "gpu") -> str:
        """The catalog name to request for a GPU name or a GPU file (read and registered)."""
        ...

    def estimate(self, req: EstimateRequest) -> PhaseEstimate | ServingEstimate: ...

    def plan(self, req: PlanRequest) -> tuple[PlanResult, str | None]:
        """The result and the stored plan's name (None in process: nothing is stored)."""
        ...

    def sweep(
        self, grid: SweepGrid, advance: Callable[[], None]
    ) -> tuple[str | None, list[ScenarioOutcome]]:
        """The stored sweep's name (None in process) and every outcome, in grid order."""
        ...

    def models(self) -> list[ModelSpec]: ...

    def gpus(self) -> list[GpuSpec]: ...

    def schedule(
        self, req: ScheduleRequest, history: ForecastSpec | None
    ) -> tuple[dict[str, Any], str | None]:
        """The schedule's JSON (``ScheduleResult.to_dict``) and its stored name (None in
        process); with a ``history``, the series is forecast from it first."""
        ...

    def close(self) -> None: ...


# -- in process -----------------------------------------------------------------------------------


@dataclass
class LocalBackend:
    """The planner in this process, over the built-in catalogs plus the files given."""

    server: str | None = None
    ray_address: str | None = None  # sweeps fan out to this Ray cluster (service.raysweep)
    _models: list[ModelSpec] = field(default_factory=list)
    _gpus: list[GpuSpec] = field(default_factory=list)

    def _catalogs(self) -> tuple[ModelCatalog | None, GpuCatalog | None]:
        from pdplanner.planner.catalog import default_gpus, default_models

        models = ModelCatalog(extra=self._models) if self._models else default_models()
        gpus = GpuCatalog(extra=self._gpus) if self._gpus else default_gpus()
        return models, gpus

    def use_model(self, name_or_path: str, field: str = "model") -> str:
        from pdplanner.planner.catalog import default_models

        if default_models().find(name_or_path) is None and is_model_path(name_or_path):
            spec = default_models().load(name_or_path, field)
            self._models.append(spec)
            return spec.name
        return name_or_path

    def use_gpu(self, name_or_path: str, field: str = "gpu") -> str:
        from pdplanner.planner.catalog import default_gpus

        if default_gpus().find(name_or_path) is None and is_file_name(name_or_path):
            spec = default_gpus().load(name_or_path, field)
            self._gpus.append(spec)
            return spec.name
        return name_or_path

    def estimate(self, req: EstimateRequest) -> PhaseEstimate | ServingEstimate:
        from pdplanner.planner.estimate import estimate

        return estimate(req, *self._catalogs())

    def plan(self, req: PlanRequest) -> tuple[PlanResult, str | None]:
        from pdplanner.planner.search import plan

        return plan(req, *self._catalogs()), None

    def sweep(
        self, grid: SweepGrid, advance: Callable[[], None]
    ) -> tuple[str | None, list[ScenarioOutcome]]:
        from pdplanner.planner.sweep import run_sweep

        if self.ray_address is not None:
            from pdplanner.service.raysweep import RayUnavailableError, ray_sweep

            try:
                outcomes = ray_sweep(
                    grid, self.ray_address, models=self._models, gpus=self._gpus, advance=advance
                )
            except RayUnavailableError as exc:
                raise CliError(f"--ray: {exc}", EXIT_FAILURE) from None
            return None, outcomes
        outcomes = []
        for outcome in run_sweep(grid, *self._catalogs()):
            outcomes.append(outcome)
            advance()
        return None, outcomes

    def models(self) -> list[ModelSpec]:
        models, _ = self._catalogs()
        return models.specs() if models is not None else []

    def gpus(self) -> list[GpuSpec]:
        _, gpus = self._catalogs()
        return gpus.specs() if gpus is not None else []

    def schedule(
        self, req: ScheduleRequest, history: ForecastSpec | None
    ) -> tuple[dict[str, Any], str | None]:
        from dataclasses import replace

        from pdplanner.planner.scaling.forecast import forecast
        from pdplanner.planner.scaling.schedule import plan_schedule

        if history is not None:
            fc = forecast(history.history, history.horizon, history.quantile, history.method)
            req = replace(req, series=fc.upper, replay_series=fc.mean)
        return plan_schedule(req, *self._catalogs()).to_dict(), None

    def close(self) -> None:
        """Nothing to close."""


# -- on a server ----------------------------------------------------------------------------------


@dataclass
class Credentials:
    """What the command line says about credentials for ``--server`` (``pdplanner --token-file
    ... --tls-ca-file ...``); each one set overrides its environment variable
    (``pdplanner.client.credentials_from_env``)."""

    token_file: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    def resolve(self) -> tuple[str | None, Any]:
        """``(token, Tls or None)`` for ``PlannerClient``; ``CliError`` (exit 2) naming the
        flag or variable whose file cannot be used."""
        from pdplanner.client import Tls, credentials_from_env, read_token_file

        try:
            token, tls = credentials_from_env()
            if self.token_file is not None:
                token = read_token_file(self.token_file)
        except ValueError as exc:
            raise CliError(f"--token-file: {exc}") from None
        files = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        if self.tls or any(files):
            base = tls or Tls()
            tls = Tls(
                ca_file=self.tls_ca_file or base.ca_file,
                cert_file=self.tls_cert_file or base.cert_file,
                key_file=self.tls_key_file or base.key_file,
            )
        return token, tls


#: This command line's credentials options (set by the ``pdplanner`` group's options).
CREDENTIALS = Credentials()


class RemoteBackend:
    """A pdplanner server (``--server HOST:PORT``), over ``PlannerClient``, with the bearer token
    and TLS of ``CREDENTIALS`` and the environment."""

    def __init__(self, target: str) -> None:
        from pdplanner.client import PlannerClient

        self.server: str | None = target
        token, tls = CREDENTIALS.resolve()
        try:
            self._client: PlannerClient = PlannerClient(
                target, timeout_s=CALL_TIMEOUT_S, token=token, tls=tls
            )
        except ValueError as exc:  # a TLS file that cannot be read, a certificate without key
            raise CliError(f"--tls: {exc}") from None

    def close(self) -> None:
        """Close the connection."""
        self._client.close()

    @contextmanager
    def _errors(self, *, wrong_name_exit: int = EXIT_FAILURE) -> Iterator[None]:
        """Turn a failed call into the planner's or the CLI's own error. ``wrong_name_exit`` is
        the exit status when the resource a name points at is missing or may not be changed
        (NOT_FOUND on ``name``, FAILED_PRECONDITION)."""
        import grpc

        from pdplanner.client import field_violations

        try:
            yield
        except grpc.RpcError as exc:
            violations = field_violations(exc)
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = (exc.details() if isinstance(exc, grpc.Call) else None) or code.name
            if code == grpc.StatusCode.NOT_FOUND and (not violations or violations[0][0] == "name"):
                raise CliError(
                    violations[0][1] if violations else details, wrong_name_exit
                ) from None
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise CliError(details, wrong_name_exit) from None
            if len(violations) > 1:  # every bad field of the request
                raise InvalidFields(violations) from None
            if violations:  # a bad field, or a model/GPU/engine name the catalog lacks
                raise InvalidInputError(*violations[0]) from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise CliError(
                    f"--server {self.server}: unavailable ({details})", EXIT_FAILURE
                ) from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise CliError(details) from None
            if code == grpc.StatusCode.ALREADY_EXISTS:
                raise CliError(details, EXIT_FAILURE) from None
            raise CliError(f"{details} ({code.name})", EXIT_FAILURE) from None

    def use_model(self, name_or_path: str, field: str = "model") -> str:
        if not is_model_path(name_or_path):
            return name_or_path
        from pdplanner.planner.catalog import read_model_file

        name, config = read_model_file(name_or_path, field)
        return self.create_model(name, config, request_id=content_id([config, []])).name

    def use_gpu(self, name_or_path: str, field: str = "gpu") -> str:
        if not is_file_name(name_or_path):
            return name_or_path
        from pdplanner.planner.catalog import load_gpu

        spec = load_gpu(name_or_path, field)
        from pdplanner.planner.catalog import gpu_to_entry

        return self.create_gpu(spec, request_id=content_id(gpu_to_entry(spec))).name

    def create_model(
        self,
        model_id: str,
        config: dict[str, Any],
        *,
        aliases: Sequence[str] = (),
        request_id: str | None = None,
    ) -> ModelSpec:
        """The CreateModel RPC (a retry with the same request_id and config is not an error)."""
        from pdplanner.service import convert

        with self._errors():
            created = self._client.create_model(
                model_id, config, aliases=aliases, request_id=request_id
            )
        return convert.model_from_proto(created)

    def create_gpu(self, spec: GpuSpec, *, request_id: str | None = None) -> GpuSpec:
        """The CreateGpu RPC (a retry with the same request_id and figures is not an error)."""
        from pdplanner.service import convert

        msg = convert.gpu_to_proto(spec, custom=True)
        with self._errors():
            created = self._client.create_gpu(spec.name, msg, request_id=request_id)
        return convert.gpu_from_proto(created)

    def estimate(self, req: EstimateRequest) -> PhaseEstimate | ServingEstimate:
        from pdplanner.service import convert

        msg = convert.estimate_request_to_proto(req)
        with self._errors():
            response = self._client.estimate(msg)
        return convert.estimate_from_proto(response)

    def plan(self, req: PlanRequest) -> tuple[PlanResult, str | None]:
        from pdplanner.service import convert

        msg = convert.plan_request_to_proto(req)  # the client adds a request_id
        with self._errors():
            stored = self._client.plan(msg)
        return convert.plan_result_from_proto(stored.result), stored.name

    def sweep(
        self, grid: SweepGrid, advance: Callable[[], None]
    ) -> tuple[str | None, list[ScenarioOutcome]]:
        from pdplanner.service import convert

        name = ""
        outcomes: dict[int, ScenarioOutcome] = {}
        with self._errors():
            for event in self._client.sweep(
                convert.sweep_grid_to_proto(grid), timeout_s=SWEEP_TIMEOUT_S
            ):
                kind = event.WhichOneof("event")
                if kind == "sweep":
                    name = event.sweep.name
                elif kind == "scenario":
                    outcomes[event.scenario.index] = _outcome(event.scenario)
                    advance()
        return name, [outcomes[i] for i in sorted(outcomes)]

    def list_plans(
        self, *, model: str | None, gpu: str | None, page_size: int | None, page_token: str | None
    ) -> tuple[list[StoredPlan], str]:
        """One page of the ListPlans RPC and the next page's token ("" on the last page)."""
        with self._errors():
            page = self._client.list_plans(
                model=model or "",
                gpu=gpu or "",
                page_size=page_size or 0,
                page_token=page_token or "",
            )
        return [_stored_plan(p) for p in page.plans], page.next_page_token

    def get_plan(self, plan_id: str) -> StoredPlan:
        """The GetPlan RPC."""
        with self._errors():
            return _stored_plan(self._client.get_plan(resources.from_id_or_name(plan_id, "plans")))

    def export_plan(self, plan_id: str, fmt: str, gpus_per_node: int | None = None) -> PlanExport:
        """The ExportPlan RPC: the files of ``fmt`` for a stored plan, on hosts of
        ``gpus_per_node`` GPUs (when None the server's default per pool: 4 for a GPU of a
        72-GPU NVLink rack, else 8)."""
        from pdplanner.service import exports

        name = resources.from_id_or_name(plan_id, "plans")
        with self._errors():
            msg = self._client.export_plan(name, exports.FORMATS[fmt], gpus_per_node=gpus_per_node)
        return exports.export_from_proto(msg, fmt)

    def delete_plan(self, plan_id: str) -> str:
        """The DeletePlan RPC; returns the deleted plan's name."""
        name = resources.from_id_or_name(plan_id, "plans")
        with self._errors():
            self._client.delete_plan(name)
        return name

    def delete_entry(self, collection: Literal["models", "gpus"], name: str) -> str:
        """The DeleteModel or DeleteGpu RPC; returns the deleted entry's resource name. A name
        that is no custom entry (unknown, or built in) is the command line's error (exit 2)."""
        resource = resources.from_id_or_name(name, collection)
        delete = self._client.delete_model if collection == "models" else self._client.delete_gpu
        with self._errors(wrong_name_exit=EXIT_USAGE):
            delete(resource)
        return resource

    def get_sweep(self, sweep_id: str) -> tuple[str, str, list[ScenarioOutcome]]:
        """The GetSweep RPC: the sweep's name, state and finished outcomes."""
        name = resources.from_id_or_name(sweep_id, "sweeps")
        with self._errors():
            sweep = self._client.get_sweep(name)
        return sweep.name, _state(sweep.state), [_outcome(s) for s in sweep.scenarios]

    def list_sweeps(
        self, *, page_size: int | None, page_token: str | None
    ) -> tuple[list[tuple[str, str, str, int, int]], str]:
        """One page of the ListSweeps RPC: (name, created, state, done, total) per sweep, and
        the next page's token ("" on the last page)."""
        with self._errors():
            page = self._client.list_sweeps(page_size=page_size or 0, page_token=page_token or "")
        rows = [
            (s.name, _created(s.create_time), _state(s.state), s.progress.done, s.progress.total)
            for s in page.sweeps
        ]
        return rows, page.next_page_token

    def models(self) -> list[ModelSpec]:
        """The ListModels RPC, every page (built-in and custom models)."""
        from pdplanner.service import convert

        with self._errors():
            return [convert.model_from_proto(m) for m in self._client.list_models()]

    def gpus(self) -> list[GpuSpec]:
        """The ListGpus RPC, every page (built-in and custom GPUs)."""
        from pdplanner.service import convert

        with self._errors():
            return [convert.gpu_from_proto(g) for g in self._client.list_gpus()]

    def schedule(
        self, req: ScheduleRequest, history: ForecastSpec | None
    ) -> tuple[dict[str, Any], str | None]:
        from pdplanner.service.convert import scaling

        msg = scaling.schedule_request_to_proto(req, history)  # the client adds a request_id
        with self._errors():
            stored = self._client.plan_scaling(msg)
        return scaling.schedule_result_to_json(stored.result), stored.name

    def list_schedules(
        self, *, model: str | None, page_size: int | None, page_token: str | None
    ) -> tuple[list[dict[str, Any]], str]:
        """One page of the ListSchedules RPC (each schedule's JSON) and the next page's token."""
        with self._errors():
            page = self._client.list_schedules(
                model=model or "", page_size=page_size or 0, page_token=page_token or ""
            )
        return [_stored_schedule(s) for s in page.schedules], page.next_page_token

    def get_schedule(self, schedule_id: str) -> dict[str, Any]:
        """The GetSchedule RPC: the stored schedule's JSON."""
        name = resources.from_id_or_name(schedule_id, "schedules")
        with self._errors():
            return _stored_schedule(self._client.get_schedule(name))

    def delete_schedule(self, schedule_id: str) -> str:
        """The DeleteSchedule RPC; returns the deleted schedule's name."""
        name = resources.from_id_or_name(schedule_id, "schedules")
        with self._errors():
            self._client.delete_schedule(name)
        return name


def _stored_schedule(msg: Any) -> dict[str, Any]:
    """A stored ``Schedule`` as JSON: name, create_time, request (message JSON) and result."""
    from google.protobuf import json_format

    from pdplanner.service.convert import scaling

    return {
        "name": msg.name,
        "create_time": msg.create_time.ToDatetime().replace(microsecond=0).isoformat() + "Z",
        "planner_version": msg.planner_version,
        "request": json_format.MessageToDict(msg.request, preserving_proto_field_name=True),
        "result": scaling.schedule_result_to_json(msg.result),
    }


def content_id(value: Any) -> str:
    """A request_id naming this content, so registering the same file twice is one creation."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return "file-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _outcome(msg: Any) -> ScenarioOutcome:
    """A streamed or stored ``SweepScenarioResult`` as the planner's outcome."""
    from pdplanner.service import convert

    request = convert.plan_request_from_proto(msg.scenario)
    if msg.errors:
        error = ScenarioError.of([(e.field, e.reason) for e in msg.errors])
        return ScenarioOutcome(msg.index, request, None, error)
    if msg.error:  # a server from before the structured errors: the text, on no field
        return ScenarioOutcome(msg.index, request, None, ScenarioError("", msg.error))
    return ScenarioOutcome(msg.index, request, convert.plan_result_from_proto(msg.result), None)


def _state(value: int) -> str:
    """``STATE_SUCCEEDED`` -> ``succeeded``: a sweep's state as the API names it."""
    from pdplanner.v1 import sweep_pb2

    return sweep_pb2.Sweep.State.Name(cast(Any, value)).removeprefix("STATE_").lower()


def _created(ts: Any) -> str:
    """A resource's create_time as ISO 8601 in UTC, to the second."""
    return str(ts.ToDatetime().replace(microsecond=0).isoformat()) + "Z"


def _stored_plan(msg: Any) -> StoredPlan:
    from pdplanner.service import convert

    return StoredPlan(
        name=msg.name,
        create_time=_created(msg.create_time),
        request=convert.plan_request_from_proto(msg.request),
        result=convert.plan_result_from_proto(msg.result),
        planner_version=msg.planner_version,
        search_ms=msg.search_ms,
    )


#: Backends this command line opened; the command group closes them when the command ends.
_OPEN: list[Backend] = []


def backend(server: str | None) -> Backend:
    """The backend for ``--server``: a server if given, else this process."""
    chosen: Backend = RemoteBackend(server) if server else LocalBackend()
    _OPEN.append(chosen)
    return chosen


def remote(server: str | None) -> RemoteBackend:
    """The server backend of a command that only makes sense against a server."""
    if not server:
        raise CliError(f"--server: is required for this command (or set {SERVER_ENV})")
    chosen = RemoteBackend(server)
    _OPEN.append(chosen)
    return chosen


def close_backends() -> None:
    """Close every backend this command line opened."""
    while _OPEN:
        _OPEN.pop().close()

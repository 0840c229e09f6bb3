"""A typed Python client of ``pdplanner.v1.PlannerService``.

    with PlannerClient("localhost:50051") as client:
        plan = client.plan(plan_pb2.PlanRequest(model="llama-3.1-70b", gpu="h100-sxm", gpus=16,
                                                traffic=[common_pb2.Workload(isl=4000, osl=500)],
                                                slo=plan_pb2.Slo(ttft_ms=1000, tpot_ms=20)))
        print(plan.name, plan.result.best.tokens_per_s_per_gpu)

Credentials: ``token`` is sent as ``authorization: Bearer TOKEN`` on every call (the server's
``PDPLANNER_AUTH_TOKENS``); ``tls=Tls(ca_file=...)`` connects over TLS, trusting that CA (or the
system's roots), and ``Tls(..., cert_file=..., key_file=...)`` also shows this client's
certificate to a server that requires one (mutual TLS). ``PlannerClient.from_env`` reads them
from ``PDPLANNER_TOKEN`` (or ``PDPLANNER_TOKEN_FILE``), ``PDPLANNER_TLS_CA_FILE``,
``PDPLANNER_TLS_CLIENT_CERT_FILE`` and ``PDPLANNER_TLS_CLIENT_KEY_FILE`` (``PDPLANNER_TLS=1``:
TLS with the system's roots). Send a token over TLS unless the server is on this machine.

Every call has a deadline (``timeout_s``, per client or per call) covering all of its attempts.
A call that fails with UNAVAILABLE (server restarting, connection lost) is retried up to
``retries`` times with exponential backoff and jitter; other errors are raised at once as
``grpc.RpcError``. Mutating calls (``plan``, ``sweep``, ``create_model``, ``create_gpu``) get a
``request_id`` when the request has none, and every attempt sends the same one, so a retry never
plans or stores twice: the server answers a repeated ``request_id`` with what it stored first.
``field_violations(error)`` reads the ``google.rpc.BadRequest`` of an INVALID_ARGUMENT error.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

import grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from pdplanner.v1 import (
    catalog_pb2,
    estimate_pb2,
    export_pb2,
    plan_pb2,
    planner_service_pb2_grpc,
    scaling_pb2,
    sweep_pb2,
)

DEFAULT_TIMEOUT_S: Final = 60.0
#: Largest message accepted from the server (a page of plans with their frontiers).
MAX_RECEIVE_MESSAGE_BYTES: Final = 64 * 1024 * 1024

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The ``(field, description)`` pairs of an error's ``google.rpc.BadRequest`` details."""
    if not isinstance(error, grpc.Call):
        return []
    status = rpc_status.from_call(error)
    if status is None:
        return []
    out: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.extend((v.field, v.description) for v in bad.field_violations)
    return out


@dataclass(frozen=True)
class Tls:
    """TLS to the server, from PEM files.

    ``ca_file``: the CA bundle the server's certificate chains to (None: the system's roots).
    ``cert_file`` and ``key_file``: this client's certificate chain and private key, for a
    server that requires client certificates (mutual TLS); both or neither.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The files as gRPC channel credentials; ``ValueError`` naming a file that is missing,
        unreadable, or a certificate without its key (or a key without its certificate)."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs its key file too (cert_file, key_file)")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "ca_file"),
            private_key=_read(self.key_file, "key_file"),
            certificate_chain=_read(self.cert_file, "cert_file"),
        )


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


#: The environment variables of ``PlannerClient.from_env`` (and of the CLI).
TOKEN_ENV: Final = "PDPLANNER_TOKEN"
TOKEN_FILE_ENV: Final = "PDPLANNER_TOKEN_FILE"
TLS_ENV: Final = "PDPLANNER_TLS"
TLS_CA_FILE_ENV: Final = "PDPLANNER_TLS_CA_FILE"
TLS_CLIENT_CERT_FILE_ENV: Final = "PDPLANNER_TLS_CLIENT_CERT_FILE"
TLS_CLIENT_KEY_FILE_ENV: Final = "PDPLANNER_TLS_CLIENT_KEY_FILE"


def read_token_file(path: str) -> str:
    """The token in a file (its first line, without surrounding blanks); ``ValueError`` when the
    file cannot be read or holds none."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"token file {path}: {exc.strerror or exc}") from None
    token = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def credentials_from_env(env: Mapping[str, str] | None = None) -> tuple[str | None, Tls | None]:
    """``(token, tls)`` from the ``PDPLANNER_TOKEN*`` and ``PDPLANNER_TLS*`` variables; TLS is
    on when ``PDPLANNER_TLS`` is 1/true/yes/on or any of its files is set."""
    env = os.environ if env is None else env

    def get(name: str) -> str | None:
        return env.get(name) or None

    token = get(TOKEN_ENV)
    if token is None and get(TOKEN_FILE_ENV) is not None:
        token = read_token_file(env[TOKEN_FILE_ENV])
    files = (get(TLS_CA_FILE_ENV), get(TLS_CLIENT_CERT_FILE_ENV), get(TLS_CLIENT_KEY_FILE_ENV))
    wanted = (get(TLS_ENV) or "").lower() in ("1", "true", "yes", "on")
    tls = Tls(*files) if wanted or any(files) else None
    return token, tls


def _with_request_id(request: Req) -> Req:
    """``request`` itself if it has a request_id, else a copy with a fresh UUID."""
    if getattr(request, "request_id", None):
        return request
    copy: Any = type(request)()
    copy.CopyFrom(request)
    copy.request_id = str(uuid.uuid4())
    return copy  # type: ignore[no-any-return]


class PlannerClient:
    """Typed methods for every PlannerService RPC, with deadlines and retries on UNAVAILABLE.

    ``target`` is ``host:port``. ``timeout_s`` is the default deadline of a call (all attempts
    together); ``retries`` the most retries after the first attempt; backoff starts at
    ``backoff_s`` and doubles up to ``max_backoff_s``. ``token`` is sent as a bearer token on
    every call; ``tls`` makes the channel a TLS one (see ``Tls``). Pass ``channel`` to use your
    own (interceptors, other credentials); the client closes only a channel it made. Use it as a
    context manager or call ``close()``. ``ValueError`` for bad arguments or unreadable files.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = 3,
        backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
        channel: grpc.Channel | None = None,
        token: str | None = None,
        tls: Tls | None = None,
    ) -> None:
        if channel is not None and tls is not None:
            raise ValueError("give tls or your own channel, not both")
        if token is not None and (not token or any(c in token for c in "\r\n")):
            raise ValueError("token must be one non-empty line")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must not be negative, got {retries}")
        self.target = target
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._metadata: tuple[tuple[str, str], ...] = (
            () if token is None else (("authorization", f"Bearer {token}"),)
        )
        options = [
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
            # reconnect quickly after a server restart, so retries find it
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        self._own_channel = channel is None
        if channel is not None:
            self._channel = channel
        elif tls is not None:
            self._channel = grpc.secure_channel(target, tls.channel_credentials(), options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._stub = planner_service_pb2_grpc.PlannerServiceStub(self._channel)

    @classmethod
    def from_env(cls, target: str, **kwargs: Any) -> PlannerClient:
        """A client of ``target`` with the token and TLS of the environment
        (``credentials_from_env``); ``kwargs`` as for the constructor."""
        token, tls = credentials_from_env()
        return cls(target, token=token, tls=tls, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel (if the client made it)."""
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> PlannerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- retries ---------------------------------------------------------------------------------

    def _backoff(self, attempt: int, remaining_s: float) -> None:
        delay = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        time.sleep(max(0.0, min(delay * random.uniform(0.5, 1.0), remaining_s)))

    def _retryable(self, error: grpc.RpcError, attempt: int, remaining_s: float) -> bool:
        """Only UNAVAILABLE is retried, while attempts and the deadline last."""
        return (
            isinstance(error, grpc.Call)
            and error.code() == grpc.StatusCode.UNAVAILABLE
            and attempt < self.retries
            and remaining_s > 0
        )

    def _call(self, method: Callable[..., Resp], request: Any, timeout_s: float | None) -> Resp:
        """Call a unary method, retrying UNAVAILABLE within the deadline."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return method(request, timeout=max(remaining, 0.001), metadata=self._metadata)
            except grpc.RpcError as error:
                remaining = deadline - time.monotonic()
                if not self._retryable(error, attempt, remaining):
                    raise
                self._backoff(attempt, remaining)
                attempt += 1

    # -- plans -----------------------------------------------------------------------------------

    def plan(
        self, request: plan_pb2.PlanRequest, *, timeout_s: float | None = None
    ) -> plan_pb2.Plan:
        """Search and store a plan; returns the stored ``Plan`` resource (``plan.name``)."""
        response = self._call(self._stub.Plan, _with_request_id(request), timeout_s)
        return response.plan

    def estimate(
        self, request: estimate_pb2.EstimateRequest, *, timeout_s: float | None = None
    ) -> estimate_pb2.EstimateResponse:
        """Evaluate one fixed configuration (nothing is stored)."""
        return self._call(self._stub.Estimate, request, timeout_s)

    def get_plan(self, name: str, *, timeout_s: float | None = None) -> plan_pb2.Plan:
        """A stored plan by name (``plans/ID``) or bare id."""
        request = plan_pb2.GetPlanRequest(name=_resource_name(name, "plans"))
        return self._call(self._stub.GetPlan, request, timeout_s).plan

    def export_plan(
        self,
        name: str,
        fmt: export_pb2.ExportFormat.ValueType,
        *,
        gpus_per_node: int | None = None,
        timeout_s: float | None = None,
    ) -> export_pb2.ExportPlanResponse:
        """The files that run a stored plan (``fmt``: an ``export_pb2.EXPORT_FORMAT_*`` value).

        ``gpus_per_node``: GPUs per host, 1 to 72 (when None the server takes 4 for a GPU of a
        72-GPU NVLink rack, else 8); a wider worker
        gets a multi-node launch."""
        request = export_pb2.ExportPlanRequest(
            name=_resource_name(name, "plans"), format=fmt, gpus_per_node=gpus_per_node
        )
        return self._call(self._stub.ExportPlan, request, timeout_s)

    def list_plans(
        self,
        *,
        model: str = "",
        gpu: str = "",
        page_size: int = 0,
        page_token: str = "",
        view: plan_pb2.PlanView.ValueType = plan_pb2.PLAN_VIEW_BASIC,
        timeout_s: float | None = None,
    ) -> plan_pb2.ListPlansResponse:
        """One page of stored plans, newest first (``next_page_token`` is empty on the last).

        ``view``: ``PLAN_VIEW_BASIC`` leaves out the Pareto frontiers (``get_plan`` has them),
        ``PLAN_VIEW_FULL`` returns whole plans."""
        request = plan_pb2.ListPlansRequest(
            model=model, gpu=gpu, page_size=page_size, page_token=page_token, view=view
        )
        return self._call(self._stub.ListPlans, request, timeout_s)

    def iter_plans(
        self,
        *,
        model: str = "",
        gpu: str = "",
        page_size: int = 0,
        view: plan_pb2.PlanView.ValueType = plan_pb2.PLAN_VIEW_BASIC,
    ) -> Iterator[plan_pb2.Plan]:
        """Every stored plan, newest first, fetching pages as needed (``view`` as for
        ``list_plans``)."""
        token = ""
        while True:
            page = self.list_plans(
                model=model, gpu=gpu, page_size=page_size, page_token=token, view=view
            )
            yield from page.plans
            token = page.next_page_token
            if not token:
                return

    def delete_plan(self, name: str, *, timeout_s: float | None = None) -> None:
        """Delete a stored plan by name (``plans/ID``) or bare id."""
        request = plan_pb2.DeletePlanRequest(name=_resource_name(name, "plans"))
        self._call(self._stub.DeletePlan, request, timeout_s)

    def delete_model(self, name: str, *, timeout_s: float | None = None) -> None:
        """Delete a custom model by name (``models/ID``) or bare id."""
        request = catalog_pb2.DeleteModelRequest(name=_resource_name(name, "models"))
        self._call(self._stub.DeleteModel, request, timeout_s)

    def delete_gpu(self, name: str, *, timeout_s: float | None = None) -> None:
        """Delete a custom GPU type by name (``gpus/ID``) or bare id."""
        request = catalog_pb2.DeleteGpuRequest(name=_resource_name(name, "gpus"))
        self._call(self._stub.DeleteGpu, request, timeout_s)

    # -- sweeps ----------------------------------------------------------------------------------

    def sweep(
        self, request: sweep_pb2.SweepRequest, *, timeout_s: float | None = None
    ) -> Iterator[sweep_pb2.SweepResponse]:
        """Stream a sweep's events: the sweep, then each scenario and progress, then the sweep.

        If the stream breaks with UNAVAILABLE, the call is repeated with the same request_id: the
        server replays what it stored and goes on, and this iterator skips what it already gave,
        so the caller sees each scenario once.
        """
        request = _with_request_id(request)
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        seen: set[int] = set()
        done = -1
        started = False
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            stream = self._stub.Sweep(
                request, timeout=max(remaining, 0.001), metadata=self._metadata
            )
            try:
                for position, event in enumerate(stream):
                    kind = event.WhichOneof("event")
                    if kind == "sweep":
                        if position == 0 and started:
                            continue  # the opening event of a repeated call
                        started = True
                    elif kind == "scenario":
                        if event.scenario.index in seen:
                            continue
                        seen.add(event.scenario.index)
                    elif kind == "progress":
                        if event.progress.done <= done:
                            continue
                        done = event.progress.done
                    yield event
                return
            except grpc.RpcError as error:
                remaining = deadline - time.monotonic()
                if not self._retryable(error, attempt, remaining):
                    raise
                self._backoff(attempt, remaining)
                attempt += 1
            finally:
                stream.cancel()

    def get_sweep(self, name: str, *, timeout_s: float | None = None) -> sweep_pb2.Sweep:
        """A stored sweep, with every finished scenario, by name (``sweeps/ID``) or bare id.

        The server pages the scenarios; this reads every page and joins them."""
        request = sweep_pb2.GetSweepRequest(name=_resource_name(name, "sweeps"))
        page = self._call(self._stub.GetSweep, request, timeout_s)
        sweep = page.sweep
        while page.next_page_token:
            request.page_token = page.next_page_token
            page = self._call(self._stub.GetSweep, request, timeout_s)
            sweep.scenarios.extend(page.sweep.scenarios)
        return sweep

    def list_sweeps(
        self, *, page_size: int = 0, page_token: str = "", timeout_s: float | None = None
    ) -> sweep_pb2.ListSweepsResponse:
        """One page of stored sweeps (without scenarios), newest first."""
        request = sweep_pb2.ListSweepsRequest(page_size=page_size, page_token=page_token)
        return self._call(self._stub.ListSweeps, request, timeout_s)

    # -- catalogs --------------------------------------------------------------------------------

    def list_models(self, *, timeout_s: float | None = None) -> list[catalog_pb2.Model]:
        """The whole model catalog (built-in and custom), by name."""
        models: list[catalog_pb2.Model] = []
        token = ""
        while True:
            request = catalog_pb2.ListModelsRequest(page_token=token)
            page = self._call(self._stub.ListModels, request, timeout_s)
            models.extend(page.models)
            token = page.next_page_token
            if not token:
                return models

    def list_gpus(self, *, timeout_s: float | None = None) -> list[catalog_pb2.Gpu]:
        """The whole GPU catalog (built-in and custom), by name."""
        gpus: list[catalog_pb2.Gpu] = []
        token = ""
        while True:
            request = catalog_pb2.ListGpusRequest(page_token=token)
            page = self._call(self._stub.ListGpus, request, timeout_s)
            gpus.extend(page.gpus)
            token = page.next_page_token
            if not token:
                return gpus

    def create_model(
        self,
        model_id: str,
        config: Mapping[str, Any] | str,
        *,
        aliases: Sequence[str] = (),
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> catalog_pb2.Model:
        """Add a custom model from its Hugging Face config.json (a dict or the file's text)."""
        request = catalog_pb2.CreateModelRequest(
            request_id=request_id or str(uuid.uuid4()), model_id=model_id, aliases=list(aliases)
        )
        if isinstance(config, str):
            request.config_json = config
        else:
            struct = struct_pb2.Struct()
            struct.update(json.loads(json.dumps(dict(config))))
            request.config.CopyFrom(struct)
        return self._call(self._stub.CreateModel, request, timeout_s).model

    def create_gpu(
        self,
        gpu_id: str,
        gpu: catalog_pb2.Gpu,
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> catalog_pb2.Gpu:
        """Add a custom GPU type."""
        request = catalog_pb2.CreateGpuRequest(
            request_id=request_id or str(uuid.uuid4()), gpu_id=gpu_id, gpu=gpu
        )
        return self._call(self._stub.CreateGpu, request, timeout_s).gpu

    # -- scaling schedules -----------------------------------------------------------------------

    def plan_scaling(
        self, request: scaling_pb2.PlanScalingRequest, *, timeout_s: float | None = None
    ) -> scaling_pb2.Schedule:
        """Plan, replay and store a scaling schedule; returns the ``Schedule`` resource."""
        response = self._call(self._stub.PlanScaling, _with_request_id(request), timeout_s)
        return response.schedule

    def get_schedule(self, name: str, *, timeout_s: float | None = None) -> scaling_pb2.Schedule:
        """A stored schedule by name (``schedules/ID``) or bare id."""
        request = scaling_pb2.GetScheduleRequest(name=_resource_name(name, "schedules"))
        return self._call(self._stub.GetSchedule, request, timeout_s).schedule

    def list_schedules(
        self,
        *,
        model: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> scaling_pb2.ListSchedulesResponse:
        """One page of stored schedules, newest first."""
        request = scaling_pb2.ListSchedulesRequest(
            model=model, page_size=page_size, page_token=page_token
        )
        return self._call(self._stub.ListSchedules, request, timeout_s)

    def delete_schedule(self, name: str, *, timeout_s: float | None = None) -> None:
        """Delete a stored schedule by name (``schedules/ID``) or bare id."""
        request = scaling_pb2.DeleteScheduleRequest(name=_resource_name(name, "schedules"))
        self._call(self._stub.DeleteSchedule, request, timeout_s)

    def rate_match(
        self, request: scaling_pb2.RateMatchRequest, *, timeout_s: float | None = None
    ) -> scaling_pb2.RateMatchResponse:
        """Target worker counts for the observed traffic (nothing is stored)."""
        return self._call(self._stub.RateMatch, request, timeout_s)


def _resource_name(name: str, collection: str) -> str:
    return name if name.startswith(collection + "/") else f"{collection}/{name}"

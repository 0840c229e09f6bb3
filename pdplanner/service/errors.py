"""How failures become gRPC statuses, with ``google.rpc`` error details (via grpcio-status).

    planner InvalidInputError     INVALID_ARGUMENT   BadRequest: a field violation (path, reason)
                                                     for each of its ``violations`` if it has them
    planner UnknownEntryError     NOT_FOUND          ResourceInfo (models/x), BadRequest (field)
    storage NotFoundError         NOT_FOUND          ResourceInfo (plans/x, sweeps/x)
    storage AlreadyExistsError    ALREADY_EXISTS     ResourceInfo
    storage InvalidPageTokenError INVALID_ARGUMENT   BadRequest on ``page_token``
    storage UnavailableError      UNAVAILABLE        (a retry may succeed); the database's own
                                                     text (host, port, driver) is only logged
    planner SearchCancelled       DEADLINE_EXCEEDED  when the call's deadline passed, else CANCELLED
    anything else                 INTERNAL           traceback logged; the message says no more

Servicer code raises ``RpcFailure`` (or lets one of the exceptions above escape); the servicer's
wrapper calls ``status_for`` once and aborts the call with the result. The proto-level checks of
``pdplanner.service.convert`` raise ``InvalidInputError`` too, so every bad request, whichever layer
noticed, reads the same to the client: a ``BadRequest`` whose violation names the field path.
"""

from __future__ import annotations

import logging
from typing import Final

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from pdplanner.planner.errors import InvalidInputError, SearchCancelled, UnknownEntryError
from pdplanner.storage.errors import (
    AlreadyExistsError,
    InvalidPageTokenError,
    NotFoundError,
    UnavailableError,
)

log = logging.getLogger("pdplanner.rpc")

#: The API's resource type of each kind of missing thing (catalog kinds and storage kinds).
_RESOURCE: Final[dict[str, tuple[str, str]]] = {
    "model": ("pdplanner.v1.Model", "models"),
    "custom model": ("pdplanner.v1.Model", "models"),
    "gpu": ("pdplanner.v1.Gpu", "gpus"),
    "custom gpu": ("pdplanner.v1.Gpu", "gpus"),
    "engine": ("pdplanner.v1.Engine", "engines"),
    "plan": ("pdplanner.v1.Plan", "plans"),
    "sweep": ("pdplanner.v1.Sweep", "sweeps"),
    "schedule": ("pdplanner.v1.Schedule", "schedules"),
}


#: What a client is told when the database cannot be reached.
STORE_UNAVAILABLE: Final = "the plan store is unavailable; retry with the same request_id"


class RpcFailure(Exception):
    """Raised inside a servicer to end the call with ``status`` (a ``grpc.Status``)."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


def _status(code: int, message: str, *details: Message) -> grpc.Status:
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return rpc_status.to_status(status_pb2.Status(code=code, message=message, details=packed))


def _bad_request(*violations: tuple[str, str]) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in violations
        ]
    )


def _resource(kind: str, key: str, description: str) -> error_details_pb2.ResourceInfo:
    resource_type, collection = _RESOURCE.get(kind.lower(), (kind, kind))
    return error_details_pb2.ResourceInfo(
        resource_type=resource_type,
        resource_name=f"{collection}/{key}",
        description=description,
    )


def invalid_argument(field: str, reason: str, *more: tuple[str, str]) -> RpcFailure:
    """INVALID_ARGUMENT with a BadRequest field violation for each (field, reason) given."""
    violations = ((field, reason), *more)
    message = "; ".join(f"{f}: {r}" for f, r in violations)
    return RpcFailure(_status(code_pb2.INVALID_ARGUMENT, message, _bad_request(*violations)))


def not_found(kind: str, key: str, field: str | None = None) -> RpcFailure:
    """NOT_FOUND for a missing resource; ``field`` names the request field that pointed at it."""
    _, collection = _RESOURCE.get(kind.lower(), (kind, kind))
    message = f"{kind} {collection}/{key} not found"
    details: list[Message] = [_resource(kind, key, message)]
    if field is not None:
        details.append(_bad_request((field, message)))
    return RpcFailure(_status(code_pb2.NOT_FOUND, message, *details))


def already_exists(kind: str, key: str, reason: str) -> RpcFailure:
    """ALREADY_EXISTS for a name that is taken."""
    return RpcFailure(_status(code_pb2.ALREADY_EXISTS, reason, _resource(kind, key, reason)))


def unavailable(message: str) -> RpcFailure:
    """UNAVAILABLE: the caller may retry (with the same request_id)."""
    return RpcFailure(_status(code_pb2.UNAVAILABLE, message))


def failed_precondition(message: str) -> RpcFailure:
    """FAILED_PRECONDITION: the request is valid but the resource is not in a state allowing it."""
    return RpcFailure(_status(code_pb2.FAILED_PRECONDITION, message))


def resource_exhausted(message: str) -> RpcFailure:
    """RESOURCE_EXHAUSTED: a limit of the server is reached; retry later, with backoff."""
    return RpcFailure(_status(code_pb2.RESOURCE_EXHAUSTED, message))


def status_for(exc: BaseException, *, deadline_passed: bool = False) -> grpc.Status:
    """The status a call ends with when ``exc`` escapes its servicer method."""
    if isinstance(exc, RpcFailure):
        return exc.status
    if isinstance(exc, UnknownEntryError):
        return _status(
            code_pb2.NOT_FOUND,
            str(exc),
            _resource(exc.kind, exc.name, exc.reason),
            _bad_request((exc.field, exc.reason)),
        )
    if isinstance(exc, InvalidInputError):  # one violation, or several (``violations``)
        first, *more = getattr(exc, "violations", ((exc.field, exc.reason),))
        return invalid_argument(*first, *more).status
    if isinstance(exc, NotFoundError):
        return not_found(exc.kind, str(exc.key)).status
    if isinstance(exc, AlreadyExistsError):
        return already_exists(exc.kind, str(exc.key), str(exc)).status
    if isinstance(exc, InvalidPageTokenError):
        reason = str(exc) or "was not issued for this listing"
        return invalid_argument("page_token", reason).status
    if isinstance(exc, UnavailableError):
        # the driver's text names the database host, port and user: the log keeps it
        log.warning("store unavailable: %s", exc)
        return unavailable(STORE_UNAVAILABLE).status
    if isinstance(exc, SearchCancelled):
        if deadline_passed:
            return _status(
                code_pb2.DEADLINE_EXCEEDED, "the deadline passed before the search ended"
            )
        return _status(code_pb2.CANCELLED, "the call was cancelled before the search ended")
    log.error("internal error", exc_info=exc)
    return _status(code_pb2.INTERNAL, "internal error; the server log has the details")


def field_violations(status: grpc.Status) -> list[tuple[str, str]]:
    """The (field, description) pairs of a status's BadRequest details (for tests and clients)."""
    out: list[tuple[str, str]] = []
    for metadata_key, value in status.trailing_metadata or ():
        if metadata_key != "grpc-status-details-bin":
            continue
        decoded = status_pb2.Status.FromString(value)
        for detail in decoded.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                out.extend((v.field, v.description) for v in bad.field_violations)
    return out

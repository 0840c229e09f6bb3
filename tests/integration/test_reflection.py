"""Server reflection answers on grpc.reflection.v1 (what newer grpcurl asks first) and v1alpha."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from pdplanner.service.server import RunningServer, start_server

Request = reflection_pb2.ServerReflectionRequest
Response = reflection_pb2.ServerReflectionResponse


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    db = tmp_path_factory.mktemp("reflection") / "plans.db"
    running: RunningServer = start_server(
        port=0, host="127.0.0.1", database_url=f"sqlite:///{db}", warmup=False
    )
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield channel
    running.stop(0)


def ask(channel: grpc.Channel, package: str, request: Request) -> Response:
    """One ServerReflectionInfo exchange on ``grpc.reflection.{package}``, by raw method path."""
    call = channel.stream_stream(
        f"/grpc.reflection.{package}.ServerReflection/ServerReflectionInfo",
        request_serializer=Request.SerializeToString,
        response_deserializer=Response.FromString,
    )
    (response,) = list(call(iter([request]), timeout=10))
    return response


@pytest.mark.parametrize("package", ["v1", "v1alpha"])
def test_both_reflection_versions_list_the_same_services(
    channel: grpc.Channel, package: str
) -> None:
    response = ask(channel, package, Request(list_services=""))
    assert {s.name for s in response.list_services_response.service} == {
        "pdplanner.v1.PlannerService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }


@pytest.mark.parametrize("package", ["v1", "v1alpha"])
def test_both_reflection_versions_describe_the_planner_service(
    channel: grpc.Channel, package: str
) -> None:
    response = ask(channel, package, Request(file_containing_symbol="pdplanner.v1.PlannerService"))
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    service_file = next(f for f in files if f.name == "pdplanner/v1/planner_service.proto")
    assert [s.name for s in service_file.service] == ["PlannerService"]
    assert "GetPlan" in [m.name for m in service_file.service[0].method]


def test_the_v1_reflection_service_describes_itself(channel: grpc.Channel) -> None:
    response = ask(
        channel, "v1", Request(file_containing_symbol="grpc.reflection.v1.ServerReflection")
    )
    (raw,) = response.file_descriptor_response.file_descriptor_proto
    file = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert (file.name, file.package) == (
        "grpc/reflection/v1/reflection.proto",
        "grpc.reflection.v1",
    )
    (method,) = file.service[0].method
    assert (method.input_type, method.output_type) == (
        ".grpc.reflection.v1.ServerReflectionRequest",
        ".grpc.reflection.v1.ServerReflectionResponse",
    )
    assert all(
        not field.type_name or field.type_name.startswith(".grpc.reflection.v1.")
        for message in file.message_type
        for field in message.field
    )


def test_an_unknown_symbol_is_not_found_on_v1(channel: grpc.Channel) -> None:
    response = ask(channel, "v1", Request(file_containing_symbol="no.such.Service"))
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]

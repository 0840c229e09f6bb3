"""Container health check: exit 0 when the server reports SERVING on the gRPC health service.

    python healthcheck.py [HOST:PORT] [SERVICE]

HOST:PORT defaults to 127.0.0.1:$PDPLANNER_PORT (50051), SERVICE to "pdplanner.v1.PlannerService".
Exit 1 (with one line on stderr) when the server is unreachable, slow or not SERVING: it answers
NOT_SERVING while it migrates the database and compiles its kernels, and during a graceful stop.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    address = argv[1] if len(argv) > 1 else f"127.0.0.1:{os.environ.get('PDPLANNER_PORT', '50051')}"
    service = argv[2] if len(argv) > 2 else "pdplanner.v1.PlannerService"
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
        except grpc.RpcError as error:
            print(f"unhealthy: {address}: {error.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {address}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

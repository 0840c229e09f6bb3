"""Python client of the pdplanner gRPC API.

    from pdplanner import PlannerClient
    from pdplanner.v1 import common_pb2, plan_pb2

``PlannerClient`` has a typed method per RPC, with deadlines and retries on UNAVAILABLE; the
generated messages and stubs live in ``pdplanner.v1`` (``from pdplanner.v1 import plan_pb2``).
"""

from pdplanner.client import PlannerClient, field_violations

__all__ = ["PlannerClient", "field_violations"]

"""pdplanner: plans aggregated and disaggregated LLM serving deployments.

One package, four parts:

- ``pdplanner.planner``: the domain core (catalogs, performance and serving model, search,
  scaling, export); plain Python and Numba, no gRPC, no SQL.
- ``pdplanner.storage``: the SQLAlchemy repository (SQLite, PostgreSQL) and its migrations.
- ``pdplanner.service``: the gRPC server, the request conversion and the ``pdplanner`` CLI.
- the Python client of the gRPC API::

      from pdplanner import PlannerClient
      from pdplanner.v1 import common_pb2, plan_pb2

  ``PlannerClient`` has a typed method per RPC, with deadlines and retries on UNAVAILABLE; the
  generated messages and stubs live in ``pdplanner.v1``.

The client is imported on first use, so ``import pdplanner.planner`` does not load gRPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pdplanner.client import PlannerClient, field_violations

__all__ = ["PlannerClient", "field_violations"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pdplanner import client

        return getattr(client, name)
    raise AttributeError(f"module 'pdplanner' has no attribute {name!r}")

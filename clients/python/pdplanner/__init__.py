"""Python client of the pdplanner gRPC API.

The generated messages and stubs live in ``pdplanner.v1`` (``from pdplanner.v1 import plan_pb2``).
"""

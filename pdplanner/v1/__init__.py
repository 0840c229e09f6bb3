"""Generated protobuf and gRPC stubs of the ``pdplanner.v1`` API (see protos/pdplanner/v1).

Regenerate with ``make proto``; do not edit the ``*_pb2*`` modules by hand.
"""

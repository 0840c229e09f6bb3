"""pdplanner's domain core: catalogs, performance model, serving model, search and scaling.

Nothing here knows about gRPC or SQL: functions take and return frozen dataclasses and NumPy
arrays, so the planner can be used as a library, tested without a server and timed on its own.
"""

__version__ = "0.1.0"


def warmup() -> float:
    """Compile every planner kernel (see ``planner.prewarm``); returns the seconds it took."""
    from planner.prewarm import warmup as _warmup

    return _warmup()

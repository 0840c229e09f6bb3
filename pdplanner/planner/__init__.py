"""pdplanner's domain core: catalogs, performance model, serving model, search and scaling.

Nothing here knows about gRPC or SQL: functions take and return frozen dataclasses and NumPy
arrays, so the planner can be used as a library, tested without a server and timed on its own.
"""

import hashlib
import os
from pathlib import Path

__version__ = "0.1.0"


def _pin_numba_cache() -> None:
    """Keep compiled kernels in a cache keyed by the planner's own source.

    Numba invalidates a cached kernel only when that kernel's own file changes, so a kernel that
    calls into an edited module (``kernels.step_ms`` calling ``opkernels.gemm_ms``) would keep the
    old code. A directory per source hash makes every change start from a clean cache. An
    explicit ``NUMBA_CACHE_DIR`` is left alone.
    """
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    os.environ["NUMBA_CACHE_DIR"] = str(base / "pdplanner" / "numba" / digest.hexdigest()[:16])


_pin_numba_cache()


def warmup() -> float:
    """Compile every planner kernel (see ``pdplanner.planner.prewarm``); returns the seconds it
    took."""
    from pdplanner.planner.prewarm import warmup as _warmup

    return _warmup()

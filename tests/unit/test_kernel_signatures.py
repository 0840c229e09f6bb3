"""The step model's kernels are compiled for one signature each, so none is compiled twice.

A kernel called once with an int and once with a float argument is compiled twice (``math.ceil``
gives an int in Numba), and the start-up compile is the sum of them all (``bench.kernel_compile``).
The check runs the prefill and decode warm-up steps in a new process on an empty kernel cache:
only a compile in that process lists the signatures of kernels called from other kernels, and
kernels that other tests called with other types do not count.

``ffn_ms`` is compiled once per value of its literal ``bool`` argument, on purpose (the branch on
it is removed at compile time), so ``Literal[bool](True)`` and ``(False)`` count as one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

_CHILD = r"""
import json
from numba.core.registry import CPUDispatcher
from pdplanner.planner.prewarm import STEPS
from pdplanner.planner.perf import kernels, opkernels
from pdplanner.planner.serving import phases
STEPS["estimate_prefill"]()
STEPS["estimate_decode"]()
found = {}
for module in (kernels, opkernels, phases):
    for name, obj in vars(module).items():
        if isinstance(obj, CPUDispatcher) and obj.__module__ == module.__name__:
            found[f"{module.__name__}.{name}"] = [str(s) for s in obj.signatures]
print(json.dumps(found))
"""


@pytest.mark.slow
def test_the_step_model_kernels_compile_for_one_signature_each(tmp_path: Path) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
    )
    found: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    distinct = {
        name: {re.sub(r"Literal\[bool\]\((True|False)\)", "bool", s) for s in sigs}
        for name, sigs in found.items()
    }
    print({name: len(sigs) for name, sigs in found.items()})
    assert len(distinct["pdplanner.planner.perf.kernels.step_ms"]) == 1
    assert len(distinct["pdplanner.planner.perf.opkernels.gemm_ms"]) == 1
    twice = {name: sorted(sigs) for name, sigs in distinct.items() if len(sigs) > 1}
    assert not twice, twice

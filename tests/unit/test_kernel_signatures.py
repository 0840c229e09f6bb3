"""The start-up warm-up compiles one specialisation per kernel, so none is compiled twice.

A kernel called once with an int and once with a float argument (or a C- and an A-layout array)
is compiled twice, and the start-up compile is the sum of them all (``bench.kernel_compile``).
The check runs ``planner.warmup`` in a new process, so that kernels other tests called with other
types do not count, and reads each dispatcher's compiled signatures.
"""

from __future__ import annotations

import json
import subprocess
import sys

_CHILD = r"""
import importlib, json, pkgutil
import planner
from numba.core.registry import CPUDispatcher
planner.warmup()
found = {}
for info in pkgutil.walk_packages(planner.__path__, "planner."):
    module = importlib.import_module(info.name)
    for name, obj in vars(module).items():
        if isinstance(obj, CPUDispatcher) and obj.__module__ == info.name:
            found[f"{info.name}.{name}"] = [str(s) for s in obj.signatures]
print(json.dumps(found))
"""


def test_the_warmup_compiles_each_kernel_for_one_signature_only() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, timeout=900
    )
    signatures: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    called = {name: sigs for name, sigs in signatures.items() if sigs}
    print(json.dumps(called, indent=1))
    # the entry points the planner calls from Python; kernels called only from other kernels
    # are compiled inside their callers and list no signature of their own
    assert "planner.serving.phases.prefill_many" in called
    assert "planner.serving.aggregated.simulate_agg" in called
    twice = {name: sigs for name, sigs in called.items() if len(sigs) > 1}
    assert not twice, twice

"""Calibrate the serving layer's free parameters on the measured runs, with cross-validation.

    .venv/bin/python tools/fit_serving.py [--k 2 4 10] [--quant-eff 0.55 0.65 1.0]
        [--eager-ms 0 0.4 0.8] [--a2a-us 6 30 50] [--only "h100"]

Parameters:

* the share of the calibrated fp8/fp4 GEMM throughput that engines' quantized linear layers
  reach (``params.QUANTIZED_GEMM_EFFICIENCY``), picked at each issue time (below) by the
  smallest mean abs. % TPOT error over every ``k`` (it is a step-time figure);
* the fixed cost of one expert-parallel dispatch or combine under attention DP
  (``params.EP_ALLTOALL_FLOOR_MS``), picked with the efficiency, by TPOT, for the same reason;
* the host's time to issue one decoder layer of a step that runs without CUDA graphs
  (``EngineSpec.eager_layer_host_ms``, for the engines named by ``--eager-engines``; default
  those whose catalog entry has one: TensorRT-LLM),
  picked with ``k`` and the overheads by the smallest sum of mean abs. % TPOT and TTFT errors: it
  lengthens the steps that carry prompts, which TTFT sees first-hand and TPOT through the steps
  it shares;
* requests per benchmark client ``k`` (``simulate.REQUESTS_PER_CLIENT``; the runs' source does
  not say how many requests a run sent) and a per-request TTFT overhead per serving mode
  (``tests/unit/test_serving_accuracy.py`` fits the latter again in its own folds), the
  overheads by the smallest mean abs. % TTFT error.

Every row is simulated once per (``k``, efficiency, issue time, all-to-all cost); each fold
(leave one engine, model or system out) picks the parameters on its training rows and is scored
on its held-out rows. Prints the folds' choices and held-out errors, and the fit on all rows.
Two cores: about 25 s per grid point.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

from serving_runs import Run, abs_pct, load_runs, predict

GRID_MS = (0.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 400.0)
# (k, quantized GEMM efficiency, eager issue ms per layer, all-to-all fixed ms; None: the
# default, the catalog's issue times and params.EP_ALLTOALL_FLOOR_MS)
Point = tuple[float, float, float | None, float | None]
Row = tuple[Run, dict[Point, tuple[float, float]]]  # point -> (TTFT mean, TPOT mean)


def _overheads(rows: list[Row], point: Point) -> tuple[float, dict[str, float]]:
    """Per serving mode the overhead of ``GRID_MS`` with the smallest TTFT error at ``point``;
    returns the mean abs. % TTFT error at them and the overheads."""
    over, total = {}, 0.0
    for mode in ("agg", "disagg"):
        sub = [(r, p[point]) for r, p in rows if r.mode == mode]
        if not sub:
            over[mode] = 0.0
            continue
        errs = {o: sum(abs_pct(t + o, r.ttft_ms) for r, (t, _) in sub) for o in GRID_MS}
        over[mode] = min(errs, key=lambda o: errs[o])
        total += errs[over[mode]]
    return total / len(rows), over


def fit(
    rows: list[Row],
    ks: list[float],
    effs: list[float],
    eagers: list[float | None],
    a2as: list[float | None],
) -> tuple[Point, dict[str, float]]:
    """At each issue time the efficiency and all-to-all cost with the smallest mean TPOT error;
    then the issue time, ``k`` and per-mode overheads with the smallest mean TPOT + mean TTFT
    error."""
    best: tuple[float, Point, dict[str, float]] | None = None
    for g in eagers:
        eff, a2a = min(
            ((e, a) for e in effs for a in a2as),
            key=lambda ea: sum(
                abs_pct(p[k, ea[0], g, ea[1]][1], r.tpot_ms) for r, p in rows for k in ks
            ),
        )
        for k in ks:
            point = (k, eff, g, a2a)
            ttft, over = _overheads(rows, point)
            tpot = sum(abs_pct(p[point][1], r.tpot_ms) for r, p in rows) / len(rows)
            if best is None or ttft + tpot < best[0]:
                best = (ttft + tpot, point, over)
    assert best is not None
    return best[1], best[2]


def _simulate(job: tuple[Run, list[Point], tuple[str, ...] | None]) -> Row | None:
    run, points, eager_engines = job
    preds = {}
    for k, eff, eager, a2a in points:
        p = predict(run, k, quant_eff=eff, eager_ms=eager, eager_engines=eager_engines, a2a_ms=a2a)
        if isinstance(p, str) or not p.ok:
            return None
        preds[k, eff, eager, a2a] = (p.ttft_ms.mean, p.tpot_ms.mean)
    return run, preds


def _ms(value: float | None, scale: float = 1.0, unit: str = "ms") -> str:
    return "the default" if value is None else f"{value * scale:g} {unit}"


def main() -> None:
    from pdplanner.planner.perf.params import QUANTIZED_GEMM_EFFICIENCY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=float, nargs="+", default=[10.0])
    ap.add_argument("--quant-eff", type=float, nargs="+", default=[QUANTIZED_GEMM_EFFICIENCY])
    ap.add_argument(
        "--eager-ms",
        type=float,
        nargs="+",
        default=None,
        help="host issue time per layer of an eager step (ms; default: the catalog's values)",
    )
    ap.add_argument(
        "--eager-engines",
        nargs="+",
        default=None,
        help="engines the --eager-ms grid applies to (default: those with a catalog value)",
    )
    ap.add_argument(
        "--a2a-us",
        type=float,
        nargs="+",
        default=None,
        help="fixed cost of one expert-parallel dispatch or combine (us; default: "
        "params.EP_ALLTOALL_FLOOR_MS)",
    )
    ap.add_argument("--only", default="", help="rows whose 'engine mode system' contains this")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    eagers: list[float | None] = args.eager_ms or [None]
    a2as: list[float | None] = [u / 1e3 for u in args.a2a_us] if args.a2a_us else [None]
    points = [(k, e, g, a) for k in args.k for e in args.quant_eff for g in eagers for a in a2as]
    engines = tuple(args.eager_engines) if args.eager_engines else None
    jobs = [(run, points, engines) for run in load_runs() if args.only in run.group]
    with multiprocessing.Pool(args.jobs) as pool:
        rows = [r for r in pool.map(_simulate, jobs, chunksize=4) if r is not None]
    print(
        f"{len(rows)} runs, k in {args.k}, quantized GEMM efficiency in {args.quant_eff}, "
        f"eager issue ms per layer in {args.eager_ms or 'the catalog'} "
        f"({engines or 'engines with one'}), all-to-all us in {args.a2a_us or 'the default'}"
    )
    schemes: dict[str, Callable[[Run], str]] = {
        "engine": lambda r: r.engine,
        "model": lambda r: r.model_family,
        "system": lambda r: r.system,
    }
    if not rows:
        sys.exit(f"--only: no simulated run's 'engine mode system' contains {args.only!r}")
    for name, key in schemes.items():
        values = sorted({key(r) for r, _ in rows})
        if len(values) < 2:
            print(f"leave one {name} out: skipped, the runs have one {name} ({values[0]})")
            continue
        ttft, tpot = [], []
        for value in values:
            train = [x for x in rows if key(x[0]) != value]
            test = [x for x in rows if key(x[0]) == value]
            point, over = fit(train, args.k, args.quant_eff, eagers, a2as)
            e = [abs_pct(p[point][0] + over[r.mode], r.ttft_ms) for r, p in test]
            ttft += e
            tpot += [abs_pct(p[point][1], r.tpot_ms) for r, p in test]
            print(
                f"  leave {name} {value} out: k={point[0]:g}, efficiency {point[1]:g}, eager "
                f"{_ms(point[2])}, all-to-all {_ms(point[3], 1e3, 'us')}, agg "
                f"{over['agg']:g} ms, disagg {over['disagg']:g} ms; held-out TTFT median "
                f"{statistics.median(e):.1f}% mean {statistics.mean(e):.1f}% ({len(e)} rows)"
            )
        print(
            f"leave one {name} out: TTFT median {statistics.median(ttft):.1f}%, mean "
            f"{statistics.mean(ttft):.1f}%; TPOT median {statistics.median(tpot):.1f}%, mean "
            f"{statistics.mean(tpot):.1f}%"
        )
    point, over = fit(rows, args.k, args.quant_eff, eagers, a2as)
    ttft = statistics.mean(abs_pct(p[point][0] + over[r.mode], r.ttft_ms) for r, p in rows)
    tpot = statistics.mean(abs_pct(p[point][1], r.tpot_ms) for r, p in rows)
    print(
        f"all rows: k={point[0]:g}, efficiency {point[1]:g}, eager {_ms(point[2])}, all-to-all "
        f"{_ms(point[3], 1e3, 'us')}, overheads "
        f"{over}; mean abs. error "
        f"TTFT {ttft:.1f}%, TPOT {tpot:.1f}%"
    )


if __name__ == "__main__":
    main()

"""Calibrate the serving layer's free parameters on the measured runs, with cross-validation.

    .venv/bin/python tools/fit_serving.py [--k 2 4 10] [--only "agg h100"]

Parameters: requests per benchmark client ``k`` (``simulate.REQUESTS_PER_CLIENT``; the runs'
source does not say how many requests a run sent) and a per-request TTFT overhead per serving
mode (``tests/unit/test_serving_accuracy.py`` fits the latter again in its own folds). Every
row is simulated once per ``k``; each fold (leave one engine, model or system out) picks the
``k`` and overheads with the smallest mean abs. % TTFT error on its training rows and is scored
on its held-out rows. Prints the folds' choices and held-out errors, and the fit on all rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

from serving_runs import Run, abs_pct, load_runs, predict

GRID_MS = (0.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 400.0)
Row = tuple[Run, dict[float, tuple[float, float]]]  # k -> (TTFT mean, TPOT mean)


def fit(rows: list[Row], ks: list[float]) -> tuple[float, dict[str, float], float]:
    best: tuple[float, float, dict[str, float]] | None = None
    for k in ks:
        over, total = {}, 0.0
        for mode in ("agg", "disagg"):
            sub = [(r, p[k]) for r, p in rows if r.mode == mode]
            if not sub:
                over[mode] = 0.0
                continue
            errs = {o: sum(abs_pct(t + o, r.ttft_ms) for r, (t, _) in sub) for o in GRID_MS}
            over[mode] = min(errs, key=lambda o: errs[o])
            total += errs[over[mode]]
        score = total / len(rows)
        if best is None or score < best[0]:
            best = (score, k, over)
    assert best is not None
    return best[1], best[2], best[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=float, nargs="+", default=[2.0, 4.0, 10.0])
    ap.add_argument("--only", default="", help="rows whose 'engine mode system' contains this")
    args = ap.parse_args()
    rows: list[Row] = []
    for run in load_runs():
        if args.only not in run.group:
            continue
        preds = {}
        for k in args.k:
            p = predict(run, k)
            if isinstance(p, str) or not p.ok:
                break
            preds[k] = (p.ttft_ms.mean, p.tpot_ms.mean)
        if len(preds) == len(args.k):
            rows.append((run, preds))
    print(f"{len(rows)} runs, k in {args.k}")
    schemes: dict[str, Callable[[Run], str]] = {
        "engine": lambda r: r.engine,
        "model": lambda r: r.model,
        "system": lambda r: r.system,
    }
    for name, key in schemes.items():
        errs = []
        for value in sorted({key(r) for r, _ in rows}):
            train = [x for x in rows if key(x[0]) != value]
            test = [x for x in rows if key(x[0]) == value]
            k, over, _ = fit(train, args.k)
            e = [abs_pct(p[k][0] + over[r.mode], r.ttft_ms) for r, p in test]
            errs += e
            print(
                f"  leave {name} {value} out: k={k:g}, agg {over['agg']:g} ms, disagg "
                f"{over['disagg']:g} ms; held-out TTFT median {statistics.median(e):.1f}% "
                f"mean {statistics.mean(e):.1f}% ({len(e)} rows)"
            )
        print(
            f"leave one {name} out: TTFT median {statistics.median(errs):.1f}%, "
            f"mean {statistics.mean(errs):.1f}%"
        )
    k, over, score = fit(rows, args.k)
    print(f"all rows: k={k:g}, overheads {over}, mean abs TTFT error {score:.1f}%")


if __name__ == "__main__":
    main()

"""Generate the sample traffic series shipped in pdplanner/planner/scaling/traces/.

    python tools/make_traces.py [--seed 7] [--out pdplanner/planner/scaling/traces]

Writes three CSV files in the trace format (``start_s,duration_s,requests_per_s,isl,osl,weight``;
rows sharing a ``start_s`` form one interval's mix). They are synthetic shapes, not measurements:

diurnal-day.csv   24 h in 5-minute intervals. The rate follows one daily cosine (trough 4 req/s
                  at 04:00, peak 20 req/s at 16:00) times a small multiplicative noise (lognormal,
                  sigma 0.05). Mix: 70% chat-like (ISL 1,500 / OSL 250), 30% long prompts (ISL
                  6,000 / OSL 400).
bursty-hour.csv   1 h in 1-minute intervals at a 2 req/s base with four bursts of 3-5 minutes at
                  3-5x the base (start, length and height drawn with the seed). Mix as above.
mix-shift-day.csv 24 h in 5-minute intervals at a steady 12 req/s (noise as above) whose mix
                  moves linearly from all chat-like (ISL 600 / OSL 300) at 00:00 to all
                  summarisation-like (ISL 8,000 / OSL 300) at 24:00.

The same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HEADER = ["start_s", "duration_s", "requests_per_s", "isl", "osl", "weight"]
CHAT_LONG = ((1500, 250, 0.7), (6000, 400, 0.3))


def _write(path: Path, rows: Sequence[tuple[float, float, float, int, int, float]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        for start, dur, rate, isl, osl, weight in rows:
            w.writerow([f"{start:g}", f"{dur:g}", f"{rate:.4f}", isl, osl, f"{weight:.4f}"])


def diurnal(rng: np.random.Generator) -> list[tuple[float, float, float, int, int, float]]:
    rows = []
    for k in range(288):
        hour = k * 5 / 60
        shape = 0.5 * (1 - math.cos(2 * math.pi * (hour - 4) / 24))  # 0 at 04:00, 1 at 16:00
        rate = (4.0 + 16.0 * shape) * float(rng.lognormal(0.0, 0.05))
        rows += [(k * 300.0, 300.0, rate, i, o, w) for i, o, w in CHAT_LONG]
    return rows


def bursty(rng: np.random.Generator) -> list[tuple[float, float, float, int, int, float]]:
    rate = np.full(60, 2.0)
    for start in sorted(rng.choice(np.arange(2, 54), size=4, replace=False)):
        length = int(rng.integers(3, 6))
        rate[start : start + length] = 2.0 * float(rng.uniform(3.0, 5.0))
    rate *= rng.lognormal(0.0, 0.05, size=60)
    return [(k * 60.0, 60.0, float(rate[k]), i, o, w) for k in range(60) for i, o, w in CHAT_LONG]


def mix_shift(rng: np.random.Generator) -> list[tuple[float, float, float, int, int, float]]:
    rows = []
    for k in range(288):
        rate = 12.0 * float(rng.lognormal(0.0, 0.05))
        summ = round(k / 287, 4)
        chat = round(1 - summ, 4)
        if chat > 0:
            rows.append((k * 300.0, 300.0, rate, 600, 300, chat))
        if summ > 0:
            rows.append((k * 300.0, 300.0, rate, 8000, 300, summ))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("pdplanner/planner/scaling/traces"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, make in (
        ("diurnal-day", diurnal),
        ("bursty-hour", bursty),
        ("mix-shift-day", mix_shift),
    ):
        _write(args.out / f"{name}.csv", make(np.random.default_rng(args.seed)))
        print(args.out / f"{name}.csv")


if __name__ == "__main__":
    main()

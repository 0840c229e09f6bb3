"""Traffic series: per interval, a request rate and a mix of (isl, osl) classes.

Formats (one interval is the rows sharing a ``start_s``):

* CSV with the header ``start_s,duration_s,requests_per_s,isl,osl[,weight]``; the weights of
  one interval's rows sum to 1 (a single row may omit the weight), every row repeats the
  interval's ``duration_s`` and ``requests_per_s``.
* JSON: a list of objects with the same keys.
* A request log (a public trace: one row per request with an arrival time and its input and
  output token counts) is bucketed into intervals by ``bucket_requests``.

Every problem raises ``InvalidInputError`` whose field names the row (``trace[3].osl``; rows
count from 0 after the header, in file order), so a user can find the line to fix.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pdplanner.planner import validate
from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.types import Workload

HEADER = ("start_s", "duration_s", "requests_per_s", "isl", "osl")
OPTIONAL = ("weight",)
WEIGHT_TOLERANCE = 1e-3  # an interval's weights must sum to 1 within this
MAX_RATE = 1e7
#: The most intervals of one series. A schedule's counts cost about 0.2 ms an interval (100,000
#: one-minute intervals of one mix: 21 s on the shared 2-core machine), so ten million read
#: from a trace would plan for most of an hour; 100,000 holds a day at one-second resolution
#: or 69 days at one-minute.
MAX_INTERVALS = 100_000
MAX_INTERVAL_S = 1e9  # the longest bucket a request log takes


def _round_up(x: float, digits: int = 3) -> float:
    """``x`` rounded up to ``digits`` significant figures."""
    scale = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return math.ceil(x / scale) * scale


def count_text(x: float) -> str:
    """A count for a message: digits grouped, or three significant figures past 10^15."""
    return f"{x:,.0f}" if x < 1e15 else f"{x:.3g}"


@dataclass(frozen=True)
class Interval:
    """One interval of a series: ``requests_per_s`` Poisson arrivals from ``start_s`` for
    ``duration_s`` seconds, lengths drawn from ``mix`` by weight."""

    start_s: float
    duration_s: float
    requests_per_s: float
    mix: tuple[Workload, ...]

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    @property
    def mean_isl(self) -> float:
        return sum(w.isl * w.weight for w in self.mix)

    @property
    def mean_osl(self) -> float:
        return sum(w.osl * w.weight for w in self.mix)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_s": self.start_s,
            "duration_s": self.duration_s,
            "requests_per_s": self.requests_per_s,
            "mix": [{"isl": w.isl, "osl": w.osl, "weight": w.weight} for w in self.mix],
        }


@dataclass(frozen=True)
class TrafficSeries:
    """Intervals in time order, none overlapping."""

    intervals: tuple[Interval, ...]

    @property
    def start_s(self) -> float:
        return self.intervals[0].start_s

    @property
    def end_s(self) -> float:
        return self.intervals[-1].end_s

    @property
    def rates(self) -> np.ndarray:
        return np.array([iv.requests_per_s for iv in self.intervals])

    def rows(self) -> list[dict[str, float]]:
        """The series in the CSV/JSON row format."""
        return [
            {
                "start_s": iv.start_s,
                "duration_s": iv.duration_s,
                "requests_per_s": iv.requests_per_s,
                "isl": w.isl,
                "osl": w.osl,
                "weight": w.weight,
            }
            for iv in self.intervals
            for w in iv.mix
        ]


def _num(row: Mapping[str, Any], key: str, where: str) -> float:
    raw = row.get(key)
    if raw is None or raw == "":
        raise InvalidInputError(f"{where}.{key}", "missing")
    if isinstance(raw, str):
        try:
            value: Any = float(raw)
        except ValueError:
            raise InvalidInputError(f"{where}.{key}", f"not a number: {raw!r}") from None
    else:
        value = raw
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError(f"{where}.{key}", f"must be a finite number, got {raw!r}")
    return float(value)


def _length(row: Mapping[str, Any], key: str, where: str) -> int:
    value = _num(row, key, where)
    if value != int(value):
        raise InvalidInputError(
            f"{where}.{key}", f"must be a whole number of tokens, got {value:g}"
        )
    return validate.integer(int(value), f"{where}.{key}", 1, validate.MAX_TOKENS)


def from_rows(rows: Sequence[Mapping[str, Any]], name: str = "trace") -> TrafficSeries:
    """Build a series from rows of the CSV/JSON format; ``name`` prefixes the error fields."""
    if not rows:
        raise InvalidInputError(name, "the series is empty: give at least one interval")
    groups: list[tuple[int, float, float, float, list[tuple[int, Workload, bool]]]] = []
    for i, row in enumerate(rows):
        where = f"{name}[{i}]"
        if not isinstance(row, Mapping):
            raise InvalidInputError(where, f"must be an object with keys {', '.join(HEADER)}")
        start = _num(row, "start_s", where)
        if start < 0:
            raise InvalidInputError(f"{where}.start_s", f"must be at least 0, got {start:g}")
        duration = _num(row, "duration_s", where)
        if duration <= 0:
            raise InvalidInputError(
                f"{where}.duration_s",
                f"must be greater than 0 (an interval of zero length), got {duration:g}",
            )
        rate = _num(row, "requests_per_s", where)
        if rate < 0:
            raise InvalidInputError(f"{where}.requests_per_s", f"must be at least 0, got {rate:g}")
        if rate > MAX_RATE:
            raise InvalidInputError(f"{where}.requests_per_s", f"must be at most {MAX_RATE:g}")
        isl, osl = _length(row, "isl", where), _length(row, "osl", where)
        has_weight = row.get("weight") not in (None, "")
        weight = _num(row, "weight", where) if has_weight else 1.0
        if weight <= 0 or weight > 1:
            raise InvalidInputError(f"{where}.weight", f"must be in (0, 1], got {weight:g}")
        if groups and start == groups[-1][1]:
            _, _, g_dur, g_rate, members = groups[-1]
            first = members[0][0]
            if duration != g_dur:
                raise InvalidInputError(
                    f"{where}.duration_s",
                    f"{duration:g} differs from {g_dur:g} in {name}[{first}] of the same interval",
                )
            if rate != g_rate:
                raise InvalidInputError(
                    f"{where}.requests_per_s",
                    f"{rate:g} differs from {g_rate:g} in {name}[{first}] of the same interval",
                )
            members.append((i, Workload(isl, osl, weight), has_weight))
            continue
        if groups:
            prev_i, prev_start, prev_dur = groups[-1][4][0][0], groups[-1][1], groups[-1][2]
            if start < prev_start:
                raise InvalidInputError(
                    f"{where}.start_s",
                    f"the series is not sorted: {start:g} comes after {prev_start:g} "
                    f"({name}[{prev_i}])",
                )
            if start < prev_start + prev_dur - 1e-9:
                raise InvalidInputError(
                    f"{where}.start_s",
                    f"{start:g} overlaps the interval starting at {prev_start:g} that lasts "
                    f"{prev_dur:g} s",
                )
        if len(groups) == MAX_INTERVALS:
            raise InvalidInputError(
                name,
                f"more than {MAX_INTERVALS:,} intervals (intervals are the distinct start_s): "
                "merge intervals into longer ones",
            )
        groups.append((i, start, duration, rate, [(i, Workload(isl, osl, weight), has_weight)]))
    intervals = []
    for first, start, duration, rate, members in groups:
        if len(members) > 1 and not all(h for _, _, h in members):
            missing = next(i for i, _, h in members if not h)
            raise InvalidInputError(
                f"{name}[{missing}].weight", "required when an interval has several rows"
            )
        total = sum(w.weight for _, w, _ in members)
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise InvalidInputError(
                f"{name}[{first}].weight",
                f"the weights of the interval starting at {start:g} sum to {total:.4g}, not 1",
            )
        mix = tuple(Workload(w.isl, w.osl, w.weight / total) for _, w, _ in members)
        intervals.append(Interval(start, duration, rate, mix))
    return TrafficSeries(tuple(intervals))


def parse_csv(text: str, name: str = "trace") -> TrafficSeries:
    reader = csv.DictReader(io.StringIO(text))
    header = tuple(h.strip() for h in (reader.fieldnames or ()))
    if header[: len(HEADER)] != HEADER or any(h not in OPTIONAL for h in header[len(HEADER) :]):
        raise InvalidInputError(
            name,
            f"the CSV header must be {','.join(HEADER)}[,weight], got {','.join(header) or 'none'}",
        )
    rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    return from_rows(rows, name)


def parse_json(text: str, name: str = "trace") -> TrafficSeries:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInputError(name, f"not valid JSON: {e.msg} at line {e.lineno}") from None
    if isinstance(data, Mapping) and "intervals" in data:
        data = data["intervals"]
    if not isinstance(data, list):
        raise InvalidInputError(
            name, "JSON must be a list of objects with keys " + ",".join(HEADER)
        )
    return from_rows(data, name)


# column names of request logs (one row per request), as public traces spell them
LOG_TIME = ("arrival_s", "timestamp", "time")
LOG_INPUT = ("isl", "input_tokens", "prompt_tokens", "contexttokens", "context_tokens")
LOG_OUTPUT = ("osl", "output_tokens", "completion_tokens", "generatedtokens", "generated_tokens")


def _log_column(header: Sequence[str], names: Sequence[str]) -> int | None:
    low = [h.strip().lower() for h in header]
    return next((low.index(n) for n in names if n in low), None)


def _seconds(raw: str, where: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise InvalidInputError(where, f"must be a finite time, got {raw!r}")
        return value
    text = raw.strip().replace("T", " ")
    head, dot, frac = text.partition(".")
    try:  # fromisoformat takes at most 6 fraction digits; some traces have 7
        t = datetime.fromisoformat(head + (dot + frac[:6] if dot else ""))
    except ValueError:
        raise InvalidInputError(where, f"not a time in seconds or ISO format: {raw!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def parse_request_log(text: str, interval_s: float = 300.0, name: str = "trace") -> TrafficSeries:
    """A request log as CSV (a time column and input and output token columns, named as in
    ``LOG_TIME``/``LOG_INPUT``/``LOG_OUTPUT``, any case), bucketed by ``bucket_requests``."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise InvalidInputError(name, "the request log is empty")
    header, body = rows[0], [r for r in rows[1:] if r]
    cols = [_log_column(header, n) for n in (LOG_TIME, LOG_INPUT, LOG_OUTPUT)]
    if any(c is None for c in cols):
        raise InvalidInputError(
            name,
            "a request log needs a time column (" + "|".join(LOG_TIME) + "), an input-token "
            "column ("
            + "|".join(LOG_INPUT)
            + ") and an output-token column ("
            + "|".join(LOG_OUTPUT)
            + ")",
        )
    ct, ci, co = (int(c) for c in cols if c is not None)
    t, isl, osl = [], [], []
    for i, r in enumerate(body):
        where = f"{name}[{i}]"
        if len(r) <= max(ct, ci, co):
            raise InvalidInputError(where, f"has {len(r)} columns, the header {len(header)}")
        t.append(_seconds(r[ct], f"{where}.{header[ct].strip()}"))
        isl.append(_length({"isl": r[ci]}, "isl", where))
        osl.append(_length({"osl": r[co]}, "osl", where))
    if not body:
        raise InvalidInputError(name, "the request log is empty")
    order = np.argsort(np.asarray(t), kind="stable")
    return bucket_requests(
        np.asarray(t)[order], np.asarray(isl)[order], np.asarray(osl)[order], interval_s
    )


def is_request_log(text: str) -> bool:
    """Whether a CSV's header is a request log's rather than the series format's."""
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    header = next(csv.reader([first]), [])
    return "start_s" not in [h.strip() for h in header] and all(
        _log_column(header, n) is not None for n in (LOG_TIME, LOG_INPUT, LOG_OUTPUT)
    )


def load(path: str | Path, name: str = "trace", interval_s: float = 300.0) -> TrafficSeries:
    """Read a series from a ``.csv`` or ``.json`` file (the suffix decides); a CSV request log
    (see ``parse_request_log``) is bucketed into intervals of ``interval_s`` seconds."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidInputError(name, f"cannot read {p}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InvalidInputError(name, f"{p} is not UTF-8 text") from None
    if p.suffix.lower() == ".json":
        return parse_json(text, name)
    if is_request_log(text):
        return parse_request_log(text, interval_s, name)
    return parse_csv(text, name)


def bucket_requests(
    arrival_s: Iterable[float],
    isl: Iterable[int],
    osl: Iterable[int],
    interval_s: float = 300.0,
) -> TrafficSeries:
    """Bucket a request log into intervals of ``interval_s`` seconds.

    Each interval's rate is its request count / ``interval_s``; its mix groups the requests by
    the octave of their ISL (1-2k, 2-4k, ... tokens) and gives each group its mean ISL and OSL
    (rounded to whole tokens) and its share of the interval's requests, so the interval's mean
    lengths are kept. Intervals without requests get rate 0 and the previous interval's mix.
    Times are shifted so that the first interval starts at the first arrival.
    """
    t = np.asarray(list(arrival_s), dtype=np.float64)
    i_arr = np.asarray(list(isl), dtype=np.float64)
    o_arr = np.asarray(list(osl), dtype=np.float64)
    if t.size == 0:
        raise InvalidInputError("trace", "the request log is empty")
    if not (t.size == i_arr.size == o_arr.size):
        raise InvalidInputError("trace", "arrival, input and output columns differ in length")
    validate.number(interval_s, "interval_s", 0.0, MAX_INTERVAL_S, lo_open=True)
    for arr, key in ((i_arr, "isl"), (o_arr, "osl")):
        bad = np.nonzero(~(arr >= 1))[0]
        if bad.size:
            raise InvalidInputError(f"trace[{bad[0]}].{key}", "must be at least 1 token")
    t = t - t.min()
    span = float(t.max())
    n = math.floor(span / interval_s) + 1
    if n > MAX_INTERVALS:
        # an interval fits when span / interval_s < MAX_INTERVALS: suggest one just past that,
        # rounded up, so the suggestion is accepted
        shortest = _round_up(span / (MAX_INTERVALS - 1))
        advice = (
            f"use intervals of at least {shortest:g} s"
            if shortest <= MAX_INTERVAL_S
            else f"no interval up to {MAX_INTERVAL_S:g} s fits: the log spans too long"
        )
        raise InvalidInputError(
            "interval_s",
            f"the log spans {count_text(span)} s: intervals of {interval_s:g} s make "
            f"{count_text(n)}, more than the {MAX_INTERVALS:,} a series takes; {advice}",
        )
    slot = np.floor(t / interval_s).astype(np.int64)
    # each interval's requests, by one sort (a scan per interval cost intervals x requests)
    order = np.argsort(slot, kind="stable")
    bounds = np.searchsorted(slot[order], np.arange(n + 1))
    intervals: list[Interval] = []
    last_mix: tuple[Workload, ...] = ()
    for k in range(n):
        sel = order[bounds[k] : bounds[k + 1]]
        count = int(sel.size)
        if count == 0:
            intervals.append(Interval(k * interval_s, interval_s, 0.0, last_mix))
            continue
        ik, ok = i_arr[sel], o_arr[sel]
        group = np.floor(np.log2(ik)).astype(np.int64)
        mix = []
        for g in np.unique(group):
            m = group == g
            mix.append(
                Workload(
                    max(1, round(float(ik[m].mean()))),
                    max(1, round(float(ok[m].mean()))),
                    float(m.sum()) / count,
                )
            )
        last_mix = tuple(mix)
        intervals.append(Interval(k * interval_s, interval_s, count / interval_s, last_mix))
    first = next(iv.mix for iv in intervals if iv.mix)
    fixed = tuple(
        iv if iv.mix else Interval(iv.start_s, iv.duration_s, 0.0, first) for iv in intervals
    )
    return TrafficSeries(fixed)

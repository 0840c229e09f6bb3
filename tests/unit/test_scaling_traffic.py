"""Traffic series: the CSV/JSON format, request logs bucketed into intervals, and bad input
named by its row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.scaling import traffic
from pdplanner.planner.types import Workload

TRACES = Path(__file__).resolve().parents[2] / "pdplanner" / "planner" / "scaling" / "traces"
HEADER = "start_s,duration_s,requests_per_s,isl,osl,weight\n"


def test_rows_sharing_a_start_form_one_interval_mix() -> None:
    s = traffic.parse_csv(
        HEADER + "0,300,2,1000,200,0.75\n0,300,2,8000,300,0.25\n300,300,4,500,100,\n"
    )
    assert len(s.intervals) == 2
    first, second = s.intervals
    assert first.mix == (Workload(1000, 200, 0.75), Workload(8000, 300, 0.25))
    assert first.mean_isl == pytest.approx(2750.0)
    assert second.requests_per_s == 4.0 and second.mix == (Workload(500, 100, 1.0),)


def test_json_with_the_same_keys_loads_the_same_series() -> None:
    csv_series = traffic.parse_csv(HEADER + "0,60,1.5,1000,200,1\n60,60,3,1000,200,1\n")
    rows = [
        {"start_s": 0, "duration_s": 60, "requests_per_s": 1.5, "isl": 1000, "osl": 200},
        {"start_s": 60, "duration_s": 60, "requests_per_s": 3, "isl": 1000, "osl": 200},
    ]
    assert traffic.parse_json(json.dumps(rows)) == csv_series


@pytest.mark.parametrize("name", ["diurnal-day", "bursty-hour", "mix-shift-day"])
def test_shipped_traces_load(name: str) -> None:
    s = traffic.load(TRACES / f"{name}.csv")
    assert s.intervals and all(iv.requests_per_s > 0 for iv in s.intervals)
    for iv in s.intervals:
        assert sum(w.weight for w in iv.mix) == pytest.approx(1.0)


def test_the_generator_reproduces_the_shipped_traces(tmp_path: Path) -> None:
    from tools.make_traces import main

    main(["--seed", "7", "--out", str(tmp_path)])
    for f in TRACES.glob("*.csv"):
        assert (tmp_path / f.name).read_text() == f.read_text(), f.name


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (HEADER, "trace", "empty"),
        (HEADER + "300,300,2,1000,200,1\n0,300,2,1000,200,1\n", "trace[1].start_s", "not sorted"),
        (HEADER + "0,300,-1,1000,200,1\n", "trace[0].requests_per_s", "at least 0"),
        (HEADER + "0,300,2,1000,200,1\n300,0,2,1000,200,1\n", "trace[1].duration_s", "zero"),
        (HEADER + "0,300,2,1000,0,1\n", "trace[0].osl", "at least 1"),
        (HEADER + "0,300,2,1000,200,0.5\n0,300,2,900,200,0.4\n", "trace[0].weight", "sum to 0.9"),
        (
            HEADER + "0,300,2,1000,200,0.5\n0,300,3,900,200,0.5\n",
            "trace[1].requests_per_s",
            "differs",
        ),
        (HEADER + "0,300,2,abc,200,1\n", "trace[0].isl", "not a number"),
        (HEADER + "0,300,2,1000,200,1\n100,300,2,1000,200,1\n", "trace[1].start_s", "overlaps"),
        ("start,rate\n0,1\n", "trace", "header"),
    ],
)
def test_bad_series_name_the_row(text: str, field: str, words: str) -> None:
    with pytest.raises(InvalidInputError) as e:
        traffic.parse_csv(text)
    assert e.value.field == field
    assert words in e.value.reason


def test_bad_json_names_the_row() -> None:
    rows = [{"start_s": 0, "duration_s": 60, "requests_per_s": 1, "isl": 10}]
    with pytest.raises(InvalidInputError) as e:
        traffic.parse_json(json.dumps(rows))
    assert e.value.field == "trace[0].osl"
    with pytest.raises(InvalidInputError, match="empty"):
        traffic.parse_json("[]")


def test_a_request_log_buckets_into_intervals_with_its_rate_and_mix() -> None:
    rng = np.random.default_rng(1)
    # 10 minutes at 2 req/s then 10 minutes at 6 req/s, short and long prompts 3:1
    t = np.concatenate([np.sort(rng.random(1200) * 600), 600 + np.sort(rng.random(3600) * 600)])
    isl = np.where(rng.random(t.size) < 0.75, 500, 8000)
    osl = np.full(t.size, 200)
    s = traffic.bucket_requests(t, isl, osl, interval_s=300)
    t = t - t.min()  # intervals start at the first arrival
    assert [round(iv.requests_per_s, 6) for iv in s.intervals] == pytest.approx(
        [np.sum((t >= a) & (t < a + 300)) / 300 for a in (0, 300, 600, 900)]
    )
    for iv in s.intervals:
        sel = (t >= iv.start_s) & (t < iv.end_s)
        assert sum(w.weight for w in iv.mix) == pytest.approx(1.0)
        assert {w.isl for w in iv.mix} == {500, 8000}  # the two lengths stay apart
        assert iv.mean_isl == pytest.approx(isl[sel].mean())
    # it is a valid series: its rows load back through the CSV/JSON path
    assert traffic.from_rows(s.rows()) == s


def test_a_public_request_log_loads_bucketed_into_intervals(tmp_path: Path) -> None:
    # the column names and time format of a public production trace (Azure LLM inference)
    log = tmp_path / "requests.csv"
    log.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,4808,10\n"
        "2023-11-16 18:15:50.9951690,3180,8\n"
        "2023-11-16 18:17:10.1000000,110,27\n"
        "2023-11-16 18:21:00.0000000,7,14\n"
    )
    s = traffic.load(log, interval_s=120)
    assert [iv.start_s for iv in s.intervals] == [0.0, 120.0, 240.0]
    assert [iv.requests_per_s for iv in s.intervals] == pytest.approx([3 / 120, 0.0, 1 / 120])
    assert s.intervals[0].mean_isl == pytest.approx((4808 + 3180 + 110) / 3, abs=1)
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,input_tokens,output_tokens\n1.0,100,0\n")
    with pytest.raises(InvalidInputError) as e:
        traffic.load(bad)
    assert e.value.field == "trace[0].osl"


def test_a_series_of_more_intervals_than_the_limit_is_refused_on_the_trace() -> None:
    # a schedule's counts cost about 0.2 ms an interval: ten million read from a trace planned
    # for most of an hour
    rows = [
        {"start_s": 60 * k, "duration_s": 60, "requests_per_s": 1, "isl": 100, "osl": 10}
        for k in range(traffic.MAX_INTERVALS + 1)
    ]
    assert len(traffic.from_rows(rows[:-1]).intervals) == traffic.MAX_INTERVALS
    with pytest.raises(InvalidInputError) as e:
        traffic.from_rows(rows)
    print(e.value)
    assert e.value.field == "trace"
    assert "more than 100,000 intervals" in e.value.reason


def test_a_request_log_bucketed_past_the_limit_names_interval_s() -> None:
    # a year of requests in one-second buckets would be 31.5 million intervals; bucketing also
    # scanned every request once per interval before
    t = np.array([0.0, 3.0e5, 3.15e7])
    with pytest.raises(InvalidInputError) as e:
        traffic.bucket_requests(t, [100] * 3, [10] * 3, interval_s=1.0)
    print(e.value)
    assert e.value.field == "interval_s" and "31,500,001" in e.value.reason
    # the interval it suggests is taken (rounded up, not to the nearest)
    shortest = float(e.value.reason.split("at least ")[1].split(" s")[0])
    assert len(traffic.bucket_requests(t, [100] * 3, [10] * 3, shortest).intervals) <= 100_000
    with pytest.raises(InvalidInputError) as e:
        traffic.bucket_requests(np.array([0.0, 1e300]), [1, 1], [1, 1], interval_s=1.0)
    assert "no interval up to 1e+09 s fits" in e.value.reason
    s = traffic.bucket_requests(t, [100] * 3, [10] * 3, interval_s=3600.0)
    assert len(s.intervals) == 8751
    assert [iv.requests_per_s * 3600 for iv in s.intervals if iv.requests_per_s] == [1, 1, 1]


def test_a_request_log_buckets_each_request_once_whatever_its_order() -> None:
    rng = np.random.default_rng(7)
    t = rng.uniform(0, 3600, 5000)
    isl = rng.integers(100, 9000, 5000)
    osl = rng.integers(10, 900, 5000)
    s = traffic.bucket_requests(t, isl, osl, interval_s=60.0)
    order = np.argsort(t)
    again = traffic.bucket_requests(t[order], isl[order], osl[order], interval_s=60.0)
    assert s == again
    counts = np.bincount(np.floor((t - t.min()) / 60.0).astype(int))
    assert [round(iv.requests_per_s * 60) for iv in s.intervals] == counts.tolist()


@pytest.mark.parametrize("stamp", ["nan", "inf", "-inf"])
def test_a_request_log_time_that_is_not_finite_names_the_row(stamp: str) -> None:
    log = f"timestamp,input_tokens,output_tokens\n0,100,10\n{stamp},100,10\n"
    with pytest.raises(InvalidInputError) as e:
        traffic.parse_request_log(log)
    assert e.value.field == "trace[1].timestamp" and "must be a finite time" in e.value.reason

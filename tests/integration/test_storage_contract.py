"""The storage contract: what every ``PlanStore`` backend must do, run on SQLite and PostgreSQL.

Each test reads as one rule of the contract. ``count_rows`` looks at the tables directly, so "one
row" and "nothing written" are checked in the database, not taken from the store's word.
"""

from __future__ import annotations

import base64
import math
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import text

from pdplanner.storage.engine import make_engine
from pdplanner.storage.errors import (
    AlreadyExistsError,
    InvalidPageTokenError,
    InvalidValueError,
    NotFoundError,
)
from pdplanner.storage.records import StoredPlan
from pdplanner.storage.repository import SqlStore

CountRows = Callable[..., int]

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


class StepClock:
    """A fake clock: ``T0``, then one ``step`` later on every call (``step=0``: frozen)."""

    def __init__(self, step: timedelta = timedelta(seconds=1), start: datetime = T0) -> None:
        self.now = start
        self.step = step
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            now, self.now = self.now, self.now + self.step
        return now


def plan_args(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a typical ``create_plan`` call."""
    args: dict[str, Any] = {
        "request_id": None,
        "model": "llama-3.1-70b",
        "gpu": "h100-sxm",
        "mode": "disagg",
        "planner_version": "0.1.0",
        "search_ms": 12.5,
        "request": {"model": "llama-3.1-70b", "gpus": 16, "traffic": [{"isl": 4000, "osl": 500}]},
        "result": {"best": {"mode": "disagg", "ttft_ms": 180.0}, "design_points": 2400},
    }
    args.update(overrides)
    return args


def all_pages(list_page: Callable[..., tuple[list[Any], str | None]], **kwargs: Any) -> list[Any]:
    """Follow page tokens from the first page to the last and return every item."""
    items, token = list_page(**kwargs)
    while token is not None:
        page, token = list_page(page_token=token, **kwargs)
        assert page, "a page token must never lead to an empty page"
        items += page
    return items


def newest_first(plans: list[StoredPlan]) -> list[str]:
    return [p.id for p in sorted(plans, key=lambda p: (p.created_at, p.id), reverse=True)]


@pytest.fixture
def clocked_store(database_url: str) -> Iterator[Callable[[StepClock], SqlStore]]:
    """Open stores on the test database whose ``created_at`` comes from a given fake clock."""
    opened: list[SqlStore] = []

    def open_store(clock: StepClock) -> SqlStore:
        opened.append(SqlStore(database_url, clock=clock))
        return opened[-1]

    yield open_store
    for s in opened:
        s.close()


# -- plans ---------------------------------------------------------------------------------------


def test_a_created_plan_reads_back_equal(store: SqlStore) -> None:
    created = store.create_plan(**plan_args(request_id="req-1"))

    assert store.get_plan(created.id) == created
    assert created.request_id == "req-1"
    assert (created.model, created.gpu, created.mode) == ("llama-3.1-70b", "h100-sxm", "disagg")
    assert created.search_ms == 12.5
    assert created.request == plan_args()["request"]
    assert created.result == plan_args()["result"]


def test_created_at_is_timezone_aware_utc(store: SqlStore) -> None:
    before = datetime.now(UTC)
    plan = store.create_plan(**plan_args())
    after = datetime.now(UTC)

    stored = store.get_plan(plan.id).created_at
    assert stored.utcoffset() == timedelta(0)
    assert before <= stored <= after


def test_a_timestamp_from_another_time_zone_is_stored_as_the_same_instant_in_utc(
    clocked_store: Callable[[StepClock], SqlStore],
) -> None:
    plus_two = datetime(2025, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    store = clocked_store(StepClock(start=plus_two))

    plan = store.get_plan(store.create_plan(**plan_args()).id)

    assert plan.created_at == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert plan.created_at.tzinfo is not None and plan.created_at.utcoffset() == timedelta(0)


def test_json_values_round_trip(store: SqlStore) -> None:
    result = {
        "pareto": {"agg": [], "disagg": [{"ttft_ms": 1e-3, "gpus": 2**40, "fits": True}]},
        "reason": None,
        "explanation": "décodage sur H100 — 8×",
        "nested": [[1, 2.5], {"k": [None, False]}],
    }
    plan = store.create_plan(**plan_args(result=result, request={}))

    stored = store.get_plan(plan.id)
    assert stored.result == result
    assert stored.request == {}


def test_getting_an_unknown_plan_raises_not_found(store: SqlStore) -> None:
    with pytest.raises(NotFoundError):
        store.get_plan("0" * 32)


def test_plans_are_listed_newest_first(clocked_store: Callable[[StepClock], SqlStore]) -> None:
    store = clocked_store(StepClock())
    ids = [store.create_plan(**plan_args()).id for _ in range(5)]

    plans, token = store.list_plans()

    assert [p.id for p in plans] == ids[::-1]
    assert token is None


@pytest.mark.parametrize("page_size", [1, 2, 3, 100])
@pytest.mark.parametrize(
    "filters",
    [{}, {"model": "qwen3-32b"}, {"gpu": "b200"}, {"model": "qwen3-32b", "gpu": "b200"}],
    ids=["all", "model", "gpu", "model+gpu"],
)
def test_pages_list_every_matching_plan_once_newest_first(
    clocked_store: Callable[[StepClock], SqlStore], page_size: int, filters: dict[str, str]
) -> None:
    store = clocked_store(StepClock())
    models, gpus = ["qwen3-32b", "llama-3.1-70b"], ["b200", "h100-sxm", "h200"]
    created = [
        store.create_plan(**plan_args(model=models[i % 2], gpu=gpus[i % 3])) for i in range(13)
    ]
    expected = [p.id for p in created[::-1] if all(getattr(p, k) == v for k, v in filters.items())]

    listed = all_pages(store.list_plans, page_size=page_size, **filters)

    assert [p.id for p in listed] == expected
    assert len(expected) >= 2


def test_plans_created_in_the_same_instant_page_without_repeats_or_gaps(
    clocked_store: Callable[[StepClock], SqlStore],
) -> None:
    store = clocked_store(StepClock(step=timedelta(0)))
    created = [store.create_plan(**plan_args()) for _ in range(7)]

    listed = all_pages(store.list_plans, page_size=2)

    assert [p.id for p in listed] == newest_first(created)


def test_a_plan_created_between_pages_does_not_shift_the_next_page(
    clocked_store: Callable[[StepClock], SqlStore],
) -> None:
    store = clocked_store(StepClock())
    created = [store.create_plan(**plan_args()) for _ in range(4)]

    first, token = store.list_plans(page_size=2)
    store.create_plan(**plan_args())  # newer than everything: belongs before page one
    second, token = store.list_plans(page_size=2, page_token=token)

    assert [p.id for p in first + second] == [p.id for p in created[::-1]]
    assert token is None


def test_an_empty_page_token_means_the_first_page(store: SqlStore) -> None:
    store.create_plan(**plan_args())

    assert store.list_plans(page_token="") == store.list_plans(page_token=None)


@pytest.mark.parametrize(
    ("asked", "returned"), [(0, 1), (-5, 1), (1, 1), (2, 2), (5000, 3)], ids=str
)
def test_page_size_is_clamped_to_1_through_1000(store: SqlStore, asked: int, returned: int) -> None:
    for _ in range(3):
        store.create_plan(**plan_args())

    plans, token = store.list_plans(page_size=asked)

    assert len(plans) == returned
    assert (token is None) == (returned == 3)


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        "!!!!",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b'{"v": 1}').decode(),
        base64.urlsafe_b64encode(b'{"v": 9, "t": "2025-01-01T00:00:00+00:00", "i": "x"}').decode(),
        base64.urlsafe_b64encode(b'{"v":1,"t":"2025-01-01T00:00:00","i":"x","f":{}}').decode(),
    ],
)
def test_a_malformed_page_token_is_rejected(store: SqlStore, token: str) -> None:
    with pytest.raises(InvalidPageTokenError):
        store.list_plans(page_token=token)


def test_a_page_token_only_continues_the_listing_it_came_from(
    clocked_store: Callable[[StepClock], SqlStore],
) -> None:
    store = clocked_store(StepClock())
    for _ in range(3):
        store.create_plan(**plan_args())
        store.create_sweep(request_id=None, request={}, total=1)
    _, plans_token = store.list_plans(model="llama-3.1-70b", page_size=1)
    _, sweeps_token = store.list_sweeps(page_size=1)
    assert plans_token is not None and sweeps_token is not None

    with pytest.raises(InvalidPageTokenError):
        store.list_plans(model="qwen3-32b", page_size=1, page_token=plans_token)
    with pytest.raises(InvalidPageTokenError):
        store.list_plans(page_size=1, page_token=plans_token)
    with pytest.raises(InvalidPageTokenError):
        store.list_plans(page_token=sweeps_token)
    with pytest.raises(InvalidPageTokenError):
        store.list_sweeps(page_token=plans_token)


def test_a_listing_can_leave_result_keys_out_and_a_get_still_has_them(
    clocked_store: Callable[[StepClock], SqlStore],
) -> None:
    store = clocked_store(StepClock())
    result = {"best": {"mode": "agg"}, "pareto_agg": [{"x": 1}] * 3, "pareto_disagg": [], "n": 2}
    ids = [store.create_plan(**plan_args(result=result)).id for _ in range(3)]

    listed = all_pages(
        store.list_plans, page_size=2, omit_result_keys=("pareto_agg", "pareto_disagg", "absent")
    )

    assert [p.id for p in listed] == ids[::-1]
    assert [p.result for p in listed] == [{"best": {"mode": "agg"}, "n": 2}] * 3
    assert store.list_plans()[0][0].result == result
    assert store.get_plan(ids[0]).result == result


@pytest.mark.parametrize("key", ["", "a.b", "a'b", "$", "1a", "a b"])
def test_a_result_key_to_leave_out_must_be_an_identifier(store: SqlStore, key: str) -> None:
    with pytest.raises(InvalidValueError):
        store.list_plans(omit_result_keys=(key,))


def test_a_deleted_plan_is_gone(store: SqlStore, count_rows: CountRows) -> None:
    kept = store.create_plan(**plan_args())
    deleted = store.create_plan(**plan_args())

    store.delete_plan(deleted.id)

    with pytest.raises(NotFoundError):
        store.get_plan(deleted.id)
    with pytest.raises(NotFoundError):
        store.delete_plan(deleted.id)
    assert [p.id for p in store.list_plans()[0]] == [kept.id]
    assert count_rows("plans") == 1


def test_a_repeated_request_id_returns_the_first_plan_and_stores_nothing(
    store: SqlStore, count_rows: CountRows
) -> None:
    first = store.create_plan(**plan_args(request_id="retry-me"))

    again = store.create_plan(**plan_args(request_id="retry-me", search_ms=99.0, mode="agg"))

    assert again == first
    assert count_rows("plans") == 1


def test_plans_without_request_id_are_all_stored(store: SqlStore, count_rows: CountRows) -> None:
    a = store.create_plan(**plan_args())
    b = store.create_plan(**plan_args())

    assert a.id != b.id
    assert count_rows("plans") == 2


def test_a_plan_is_found_by_its_request_id(store: SqlStore) -> None:
    plan = store.create_plan(**plan_args(request_id="find-me"))
    store.create_plan(**plan_args(request_id="someone-else"))

    assert store.find_plan_by_request_id("find-me") == plan
    assert store.find_plan_by_request_id("never-used") is None


def race(threads_n: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(i)`` in ``threads_n`` threads released at the same instant; return the results."""
    barrier = threading.Barrier(threads_n)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            barrier.wait()
            outcome = call(i)
            with lock:
                results.append(outcome)
        except BaseException as e:
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(results) == threads_n
    return results


def test_racing_creates_with_one_request_id_store_one_plan(
    store: SqlStore, count_rows: CountRows
) -> None:
    plans = race(8, lambda i: store.create_plan(**plan_args(request_id="raced", search_ms=i)))

    assert len({p.id for p in plans}) == 1
    assert count_rows("plans") == 1


def test_racing_creates_with_one_request_id_store_one_sweep(
    store: SqlStore, count_rows: CountRows
) -> None:
    outcomes = race(8, lambda i: store.create_sweep(request_id="raced", request={}, total=i + 1))

    assert len({sweep.id for sweep, _ in outcomes}) == 1
    assert sorted(created for _, created in outcomes) == [False] * 7 + [True]
    assert count_rows("sweeps") == 1


def test_an_unknown_mode_is_rejected(store: SqlStore, count_rows: CountRows) -> None:
    with pytest.raises(InvalidValueError):
        store.create_plan(**plan_args(mode="hybrid"))
    assert count_rows("plans") == 0


@pytest.mark.parametrize(
    "bad_value",
    [object(), math.nan, math.inf, {1, 2}],
    ids=["object", "nan", "inf", "set"],
)
def test_a_plan_that_cannot_be_stored_leaves_no_row(
    store: SqlStore, count_rows: CountRows, bad_value: object
) -> None:
    store.create_plan(**plan_args())

    with pytest.raises(InvalidValueError):
        store.create_plan(**plan_args(request_id="bad", result={"best": {"ttft_ms": bad_value}}))

    assert count_rows("plans") == 1
    assert store.find_plan_by_request_id("bad") is None
    # The failed call did not poison the request_id: a corrected retry stores normally.
    assert store.create_plan(**plan_args(request_id="bad")).request_id == "bad"


# -- sweeps --------------------------------------------------------------------------------------


def test_a_sweep_collects_its_scenarios_in_index_order(store: SqlStore) -> None:
    sweep, created = store.create_sweep(request_id="sweep-1", request={"grid": [1, 2, 3]}, total=3)
    assert created
    assert (sweep.state, sweep.done, sweep.total, sweep.scenarios) == ("running", 0, 3, ())

    store.add_sweep_scenario(sweep.id, 2, {"isl": 3}, result={"ttft_ms": 3.0})
    store.add_sweep_scenario(sweep.id, 0, {"isl": 1}, result={"ttft_ms": 1.0})
    store.add_sweep_scenario(sweep.id, 1, {"isl": 2}, error="model does not fit")
    assert store.get_sweep(sweep.id).done == 3
    store.finish_sweep(sweep.id, "done")

    got = store.get_sweep(sweep.id)
    assert (got.state, got.done, got.request_id, got.request) == (
        "done",
        3,
        "sweep-1",
        {"grid": [1, 2, 3]},
    )
    assert [s.index for s in got.scenarios] == [0, 1, 2]
    assert [s.scenario for s in got.scenarios] == [{"isl": 1}, {"isl": 2}, {"isl": 3}]
    assert [(s.result, s.error) for s in got.scenarios] == [
        ({"ttft_ms": 1.0}, None),
        (None, "model does not fit"),
        ({"ttft_ms": 3.0}, None),
    ]


def test_a_sweep_can_fail(store: SqlStore) -> None:
    sweep, _ = store.create_sweep(request_id=None, request={}, total=2)

    store.finish_sweep(sweep.id, "failed")

    assert store.get_sweep(sweep.id).state == "failed"


def test_a_repeated_sweep_request_id_returns_the_first_sweep(
    store: SqlStore, count_rows: CountRows
) -> None:
    first, created_first = store.create_sweep(request_id="s", request={"a": 1}, total=2)

    again, created_again = store.create_sweep(request_id="s", request={"a": 2}, total=5)

    assert (created_first, created_again) == (True, False)
    assert again == first
    assert count_rows("sweeps") == 1


def test_a_scenario_index_stored_twice_is_rejected_and_not_counted(
    store: SqlStore, count_rows: CountRows
) -> None:
    sweep, _ = store.create_sweep(request_id=None, request={}, total=2)
    store.add_sweep_scenario(sweep.id, 0, {"n": 0}, result={"ok": True})

    with pytest.raises(AlreadyExistsError):
        store.add_sweep_scenario(sweep.id, 0, {"n": 0}, result={"ok": False})

    got = store.get_sweep(sweep.id)
    assert got.done == 1
    assert [s.result for s in got.scenarios] == [{"ok": True}]


def test_a_scenario_that_cannot_be_stored_leaves_the_sweep_unchanged(
    store: SqlStore, count_rows: CountRows
) -> None:
    sweep, _ = store.create_sweep(request_id=None, request={}, total=2)

    with pytest.raises(InvalidValueError):
        store.add_sweep_scenario(sweep.id, 0, {"n": 0}, result={"ttft_ms": object()})

    assert store.get_sweep(sweep.id).done == 0
    assert count_rows("sweep_scenarios") == 0


@pytest.mark.parametrize(
    ("index", "outcome"),
    [
        (0, {}),
        (0, {"result": {"x": 1}, "error": "both"}),
        (-1, {"error": "e"}),
        (2, {"error": "e"}),
    ],
    ids=["neither-result-nor-error", "both", "negative-index", "index-past-total"],
)
def test_an_invalid_scenario_is_rejected(
    store: SqlStore, count_rows: CountRows, index: int, outcome: dict[str, Any]
) -> None:
    sweep, _ = store.create_sweep(request_id=None, request={}, total=2)

    with pytest.raises(InvalidValueError):
        store.add_sweep_scenario(sweep.id, index, {"n": index}, **outcome)

    assert store.get_sweep(sweep.id).done == 0
    assert count_rows("sweep_scenarios") == 0


def test_an_unknown_sweep_raises_not_found(store: SqlStore) -> None:
    with pytest.raises(NotFoundError):
        store.get_sweep("missing")
    with pytest.raises(NotFoundError):
        store.add_sweep_scenario("missing", 0, {}, result={})
    with pytest.raises(NotFoundError):
        store.finish_sweep("missing", "done")
    with pytest.raises(NotFoundError):
        store.delete_sweep("missing")


def test_a_sweep_can_only_finish_as_done_or_failed(store: SqlStore) -> None:
    sweep, _ = store.create_sweep(request_id=None, request={}, total=1)

    with pytest.raises(InvalidValueError):
        store.finish_sweep(sweep.id, "running")
    with pytest.raises(InvalidValueError):
        store.create_sweep(request_id=None, request={}, total=-1)


def test_deleting_a_sweep_deletes_its_scenarios(store: SqlStore, count_rows: CountRows) -> None:
    kept, _ = store.create_sweep(request_id=None, request={}, total=1)
    deleted, _ = store.create_sweep(request_id=None, request={}, total=2)
    store.add_sweep_scenario(kept.id, 0, {}, result={})
    store.add_sweep_scenario(deleted.id, 0, {}, result={})
    store.add_sweep_scenario(deleted.id, 1, {}, error="e")

    store.delete_sweep(deleted.id)

    with pytest.raises(NotFoundError):
        store.get_sweep(deleted.id)
    assert count_rows("sweep_scenarios", "sweep_id = :s", s=deleted.id) == 0
    assert count_rows("sweep_scenarios", "sweep_id = :s", s=kept.id) == 1


def test_the_database_itself_cascades_sweep_deletes(
    store: SqlStore, database_url: str, count_rows: CountRows
) -> None:
    sweep, _ = store.create_sweep(request_id=None, request={}, total=1)
    store.add_sweep_scenario(sweep.id, 0, {}, result={})

    engine = make_engine(database_url)  # the store's engine setup: SQLite foreign keys on
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM sweeps WHERE id = :s"), {"s": sweep.id})
    engine.dispose()

    assert count_rows("sweep_scenarios") == 0


def test_sweeps_are_listed_newest_first_in_pages_without_scenarios(
    clocked_store: Callable[[StepClock], SqlStore],
) -> None:
    store = clocked_store(StepClock())
    ids = []
    for i in range(5):
        sweep, _ = store.create_sweep(request_id=f"s{i}", request={"i": i}, total=1)
        store.add_sweep_scenario(sweep.id, 0, {}, result={})
        ids.append(sweep.id)

    listed = all_pages(store.list_sweeps, page_size=2)

    assert [s.id for s in listed] == ids[::-1]
    assert all(s.scenarios == () and s.done == 1 for s in listed)


# -- custom catalog entries ----------------------------------------------------------------------


@pytest.fixture(params=["model", "gpu"])
def entry_kind(request: pytest.FixtureRequest) -> str:
    """Run a custom-entry test for models and for GPUs."""
    return str(request.param)


def _entry_api(store: SqlStore, kind: str) -> tuple[Callable[..., Any], ...]:
    return (
        getattr(store, f"create_custom_{kind}"),
        getattr(store, f"get_custom_{kind}"),
        getattr(store, f"list_custom_{kind}s"),
    )


def test_custom_entries_are_stored_and_listed_by_name(store: SqlStore, entry_kind: str) -> None:
    create, get, list_all = _entry_api(store, entry_kind)
    spec = {"hidden_size": 8192, "num_attention_heads": 64, "rope_scaling": None}

    zeta = create("zeta", spec)
    alpha = create("alpha", {"n": 1})

    assert get("zeta") == zeta
    assert zeta.spec == spec and zeta.name == "zeta" and zeta.created_at.utcoffset() == timedelta(0)
    assert [e.name for e in list_all()] == ["alpha", "zeta"]
    assert list_all()[0] == alpha


def test_a_duplicate_custom_entry_name_is_rejected(
    store: SqlStore, entry_kind: str, count_rows: CountRows
) -> None:
    create, get, _ = _entry_api(store, entry_kind)
    create("mine", {"v": 1})

    with pytest.raises(AlreadyExistsError):
        create("mine", {"v": 2})

    assert get("mine").spec == {"v": 1}
    assert count_rows(f"custom_{entry_kind}s") == 1


def test_an_unknown_custom_entry_raises_not_found(store: SqlStore, entry_kind: str) -> None:
    _, get, list_all = _entry_api(store, entry_kind)

    with pytest.raises(NotFoundError):
        get("nobody")
    assert list_all() == []


def test_custom_models_and_gpus_have_separate_names(store: SqlStore) -> None:
    store.create_custom_model("same", {"kind": "model"})
    store.create_custom_gpu("same", {"kind": "gpu"})

    assert store.get_custom_model("same").spec == {"kind": "model"}
    assert store.get_custom_gpu("same").spec == {"kind": "gpu"}


# -- durability ----------------------------------------------------------------------------------


def test_everything_survives_reopening_the_store(database_url: str) -> None:
    with SqlStore(database_url) as first:
        plan = first.create_plan(**plan_args(request_id="durable"))
        sweep, _ = first.create_sweep(request_id="durable-sweep", request={"a": 1}, total=1)
        first.add_sweep_scenario(sweep.id, 0, {"isl": 1}, result={"ok": True})
        model = first.create_custom_model("m", {"hidden_size": 1})
        gpu = first.create_custom_gpu("g", {"hbm_gb": 80})
        sweep_then = first.get_sweep(sweep.id)

    with SqlStore(database_url) as second:
        assert second.get_plan(plan.id) == plan
        assert second.find_plan_by_request_id("durable") == plan
        assert second.get_sweep(sweep.id) == sweep_then
        assert second.get_custom_model("m") == model
        assert second.get_custom_gpu("g") == gpu


# -- schedules -----------------------------------------------------------------------------------


def schedule_args(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a typical ``create_schedule`` call."""
    args: dict[str, Any] = {
        "request_id": None,
        "model": "llama-3.1-70b",
        "gpu": "h100-sxm",
        "planner_version": "0.1.0",
        "gpu_hours": 626.0,
        "slo_attainment": 0.9998,
        "violations": 0,
        "request": {"gpus": 128, "trace": [{"start_s": 0, "requests_per_s": 4.0}]},
        "result": {"intervals": [{"start_s": 0, "gpus": 24}], "events": [], "totals": {}},
    }
    args.update(overrides)
    return args


def test_a_schedule_reads_back_equal_and_is_deleted(store: SqlStore) -> None:
    created = store.create_schedule(**schedule_args(slo_attainment=None, violations=3))
    assert store.get_schedule(created.id) == created
    assert created.slo_attainment is None and created.violations == 3
    assert created.result["intervals"][0]["gpus"] == 24
    store.delete_schedule(created.id)
    with pytest.raises(NotFoundError):
        store.get_schedule(created.id)
    with pytest.raises(NotFoundError):
        store.delete_schedule(created.id)


def test_a_repeated_schedule_request_id_returns_the_first_schedule(
    store: SqlStore, count_rows: CountRows
) -> None:
    first = store.create_schedule(**schedule_args(request_id="s-1"))
    again = store.create_schedule(**schedule_args(request_id="s-1", gpu_hours=1.0))
    assert again == first
    assert count_rows("schedules") == 1


def test_racing_creates_with_one_request_id_store_one_schedule(
    store: SqlStore, count_rows: CountRows
) -> None:
    results = race(6, lambda i: store.create_schedule(**schedule_args(request_id="race")))
    assert len({r.id for r in results}) == 1
    assert count_rows("schedules") == 1


def test_schedules_are_listed_newest_first_in_pages_filtered_by_model(
    clocked_store: Callable[[StepClock], SqlStore],
) -> None:
    store = clocked_store(StepClock())
    ids = [store.create_schedule(**schedule_args(model=m)).id for m in ("a", "b", "a", "a")]
    listed = all_pages(store.list_schedules, page_size=2)
    assert [s.id for s in listed] == ids[::-1]
    assert [s.id for s in all_pages(store.list_schedules, model="a", page_size=1)] == [
        ids[3],
        ids[2],
        ids[0],
    ]


def test_a_negative_violation_count_is_rejected(store: SqlStore, count_rows: CountRows) -> None:
    with pytest.raises(InvalidValueError):
        store.create_schedule(**schedule_args(violations=-1))
    assert count_rows("schedules") == 0

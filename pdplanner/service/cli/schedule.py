"""``pdplanner schedule``, ``schedules list|get|delete`` and ``simulate``: elastic scaling.

``schedule`` plans worker counts and shapes over a traffic series (``--trace``), or over a forecast
of a history (``--history``), and replays it with static deployments sized for the peak and the
mean; in process by default, on a server (which stores it as ``schedules/{id}``) with
``--server``. ``simulate`` replays a trace through a fixed xPyD deployment (its pools checked as
``estimate --mode disagg`` checks them), or through a stored schedule (then no fixed
deployment's flag), in process. A bad trace names its row: ``error: --trace: trace[3].osl:
...``; forecast flags (``--horizon``, ``--quantile``, ``--forecast``) go with ``--history`` only.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import typer
from rich.table import Table

from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.scaling.forecast import (
    DEFAULT_QUANTILE,
    MAX_HORIZON,
    check_horizon,
    check_method,
    check_quantile,
)
from pdplanner.planner.serving.scheduler import parse_engine_arg
from pdplanner.planner.types import DEFAULT_DTYPE, DEFAULT_ENGINE, Mode, Precision, Slo
from pdplanner.planner.validate import Violations
from pdplanner.service.cli import inputs
from pdplanner.service.cli.app import (
    DtypeOpt,
    EngineOpt,
    JsonOpt,
    KvDtypeOpt,
    MemoryFractionOpt,
    ServerOpt,
    app,
    group,
    show,
    show_json,
)
from pdplanner.service.cli.backend import backend, remote
from pdplanner.service.cli.errors import CliError, flags

schedules_app = group(
    "schedules", "Scaling schedules stored on a server (needs --server).", no_args_is_help=True
)

_REQ = "request"
_SLO = "SLO"
_TRAFFIC = "traffic"
_SCALING = "scaling"
_POOLS = ("prefill", "decode")
DEFAULT_STARTUP_S = 300.0
_FORECAST_ONLY = "applies to a forecast of --history only; with --trace it would be ignored"

SCHEDULE_KEYS = (
    "model", "gpu", "decode_gpu", "gpus", "trace", "history", "horizon", "quantile", "forecast",
    "interval_s", "ttft_ms", "tpot_ms", "percentile", "startup_s", "cooldown_s", "min_workers",
    "price_per_gpu_hour", "seed", "dtype", "kv_dtype", "engine",
)  # fmt: skip
_RENAMED = {
    "slo.ttft_ms": "--ttft-ms",
    "slo.tpot_ms": "--tpot-ms",
    "slo.percentile": "--percentile",
    "slo": "--ttft-ms/--tpot-ms",
    "trace": "--trace",
    "history": "--history",
    "trace|history": "--trace/--history",
    "method": "--forecast",
    "forecast.horizon": "--horizon",
    "forecast.quantile": "--quantile",
    "forecast.method": "--forecast",
    "forecast.history": "--history",
    "precision.dtype": "--dtype",
    "precision.kv_dtype": "--kv-dtype",
}

ModelOpt = Annotated[str | None, typer.Option(help="Model name or alias.", rich_help_panel=_REQ)]
GpuOpt = Annotated[
    str | None,
    typer.Option(help="GPU type (of both pools unless --decode-gpu).", rich_help_panel=_REQ),
]
DecodeGpuOpt = Annotated[
    str | None, typer.Option(help="GPU type of the decode pool.", rich_help_panel=_REQ)
]
TraceOpt = Annotated[
    str | None,
    typer.Option(
        metavar="FILE",
        rich_help_panel=_TRAFFIC,
        help="Traffic series: CSV with header start_s,duration_s,requests_per_s,isl,osl[,weight] "
        "(rows sharing a start_s are one interval's mix) or JSON with the same keys; or a "
        "request log (time, input and output token columns) bucketed by --interval-s.",
    ),
]
IntervalOpt = Annotated[
    float,
    typer.Option(
        rich_help_panel=_TRAFFIC, help="Seconds per interval when bucketing a request log."
    ),
]
TtftOpt = Annotated[float | None, typer.Option(help="TTFT target (ms).", rich_help_panel=_SLO)]
TpotOpt = Annotated[float | None, typer.Option(help="TPOT target (ms).", rich_help_panel=_SLO)]
PercentileOpt = Annotated[
    str,
    typer.Option(
        metavar="p50|p90|p99", rich_help_panel=_SLO, help="Which percentile must meet the targets."
    ),
]
StartupOpt = Annotated[
    float,
    typer.Option(rich_help_panel=_SCALING, help="Seconds from launching a worker to serving."),
]
SeedOpt = Annotated[int, typer.Option(help="Seed of the replay's random arrivals.")]


def _flag(field: str, traffic: str = "--trace") -> str:
    """The flag behind a field path of a schedule or a replay (a traffic row keeps its path;
    an interval of the planned series, ``series.intervals[k]``, is named under ``traffic``,
    the flag that gave it; a pool of a fixed deployment, ``prefill.parallelism.tp``, is its
    ``--prefill-tp``)."""
    if field in _RENAMED:
        return _RENAMED[field]
    if field.startswith(("trace", "rows")):
        return f"--trace: {field}"
    if field.startswith("history["):
        return f"--history: {field}"
    if field.startswith("series."):
        return f"{traffic}: {field}"
    role, dot, rest = field.partition(".")
    if role in _POOLS and not dot:  # the pool's worker does not fit: its layout and batch
        return "/".join(f"--{role}-{key}" for key in ("tp", "pp", "batch"))
    if role in _POOLS:
        return f"--{role}-{rest.rsplit('.', 1)[-1].replace('_', '-')}"
    key = field.split(".")[0].split("[")[0]
    if key in SCHEDULE_KEYS or (key == field and key.replace("_", "").isalpha()):
        return f"--{key.replace('_', '-')}"
    return field


def _describe(exc: InvalidInputError, traffic: str = "--trace") -> str:
    return inputs.describe_as(exc, partial(_flag, traffic=traffic))


def _required(v: Violations, **values: object) -> None:
    for key, value in values.items():
        if value is None:
            v.add(key, "is required")


def _load(path: str, name: str, interval_s: float) -> Any:
    from pdplanner.planner.scaling.traffic import load

    return load(path, name, interval_s)


@app.command(no_args_is_help=True)
def schedule(
    model: ModelOpt = None,
    gpu: GpuOpt = None,
    decode_gpu: DecodeGpuOpt = None,
    gpus: Annotated[
        int | None,
        typer.Option(help="GPU limit, both pools, at every moment.", rich_help_panel=_REQ),
    ] = None,
    trace: TraceOpt = None,
    history: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            rich_help_panel=_TRAFFIC,
            help="Past traffic (same formats as --trace, equal back-to-back intervals, two days "
            "or more) to forecast instead of --trace.",
        ),
    ] = None,
    horizon: Annotated[
        int | None,
        typer.Option(
            rich_help_panel=_TRAFFIC,
            help=f"Intervals to forecast, 1 to {MAX_HORIZON:,} (default: one day).",
        ),
    ] = None,
    quantile: Annotated[
        float | None,
        typer.Option(
            rich_help_panel=_TRAFFIC, help="Forecast quantile to plan for (default: 0.9)."
        ),
    ] = None,
    forecast_method: Annotated[
        str | None,
        typer.Option(
            "--forecast",
            metavar="ets|sarima",
            rich_help_panel=_TRAFFIC,
            help="Forecast model (default: ets).",
        ),
    ] = None,
    interval_s: IntervalOpt = 300.0,
    ttft_ms: TtftOpt = None,
    tpot_ms: TpotOpt = None,
    percentile: PercentileOpt = "p50",
    startup_s: StartupOpt = DEFAULT_STARTUP_S,
    cooldown_s: Annotated[
        float,
        typer.Option(
            rich_help_panel=_SCALING, help="No scale-down until this long after a peak (s)."
        ),
    ] = 900.0,
    min_workers: Annotated[
        int, typer.Option(rich_help_panel=_SCALING, help="Fewest workers per pool.")
    ] = 1,
    price_per_gpu_hour: Annotated[
        float | None,
        typer.Option(rich_help_panel=_SCALING, help="Price of one GPU-hour, for the cost."),
    ] = None,
    simulate: Annotated[
        bool,
        typer.Option(
            "--simulate/--no-simulate", help="Replay the schedule and the static deployments."
        ),
    ] = True,
    mode: Annotated[
        list[str] | None,
        typer.Option(
            "--mode",
            metavar="agg|disagg",
            rich_help_panel=_SCALING,
            help="A serving mode intervals may use (repeatable; default: both).",
        ),
    ] = None,
    seed: SeedOpt = 0,
    dtype: DtypeOpt = None,
    kv_dtype: KvDtypeOpt = None,
    engine: EngineOpt = None,
    memory_fraction: MemoryFractionOpt = None,
    engine_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--engine-arg",
            metavar="KEY=VALUE",
            help="Override an engine scheduler setting (repeatable): max_num_batched_tokens, "
            "max_num_seqs, enable_chunked_prefill, kv_admission, gpu_memory_utilization, ...",
        ),
    ] = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Plan an elastic scaling schedule over a traffic series and prove it by replay."""
    from pdplanner.planner.scaling.forecast import ForecastSpec
    from pdplanner.planner.scaling.schedule import ScheduleRequest
    from pdplanner.planner.scaling.traffic import TrafficSeries

    v = Violations()
    _required(v, model=model, gpu=gpu, gpus=gpus, ttft_ms=ttft_ms, tpot_ms=tpot_ms)
    if (trace is None) == (history is None):
        v.add("trace|history", "give one: a traffic series, or a history to forecast one")
    elif trace is not None:  # the forecast's settings would go unused
        forecast_flags = {"horizon": horizon, "quantile": quantile, "method": forecast_method}
        for key, value in forecast_flags.items():
            if value is not None:
                v.add(key, _FORECAST_ONLY)
    else:
        if horizon is not None:
            v.value(partial(check_horizon, horizon))
        if quantile is not None:
            v.value(partial(check_quantile, quantile))
        if forecast_method is not None:
            v.value(partial(check_method, forecast_method))
    spec = None
    traffic = "--trace" if trace is not None else "--history"
    try:
        v.raise_any()
        assert model is not None and gpu is not None and gpus is not None
        assert ttft_ms is not None and tpot_ms is not None
        if trace is not None:
            series = _load(trace, "trace", interval_s)
        else:
            assert history is not None
            past = _load(history, "history", interval_s)
            step = past.intervals[0].duration_s
            day = max(1, round(86_400 / step))
            if horizon is None and day > MAX_HORIZON:  # the default, one day, is too many
                raise InvalidInputError(
                    "history",
                    f"one day of its {step:g}-second intervals is {day:,} intervals, more than "
                    f"the {MAX_HORIZON:,} a forecast covers: give --horizon, or longer intervals",
                )
            spec = ForecastSpec(
                past,
                horizon if horizon is not None else day,  # both checked above
                DEFAULT_QUANTILE if quantile is None else quantile,
                check_method(forecast_method or "ets"),
            )
            series = TrafficSeries(())
        runner = backend(server)
        req = ScheduleRequest(
            model=runner.use_model(model),
            gpu=runner.use_gpu(gpu),
            gpus=gpus,
            series=series,
            slo=Slo(ttft_ms, tpot_ms, percentile),  # type: ignore[arg-type]
            decode_gpu=runner.use_gpu(decode_gpu, "decode_gpu") if decode_gpu else None,
            startup_s=startup_s,
            cooldown_s=cooldown_s,
            min_workers=min_workers,
            price_per_gpu_hour=price_per_gpu_hour,
            precision=Precision(dtype or inputs.default_dtype(model), kv_dtype or DEFAULT_DTYPE),
            engine=engine or DEFAULT_ENGINE,
            simulate=simulate,
            seed=seed,
            memory_fraction=memory_fraction,
            engine_args=tuple(parse_engine_arg(a, "engine_arg") for a in engine_arg or ()),
            modes=_modes(mode),
        )
        result, name = runner.schedule(req, spec)
    except InvalidInputError as exc:
        raise CliError(_describe(exc, traffic)) from None
    if json_out:
        show_json({"name": name, **result} if name else result)
    else:
        _show_schedule(result, name)


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def _layout(pool: dict[str, Any] | None) -> str:
    if not pool:
        return "-"
    lay = pool["layout"]
    return f"{pool['workers']} x TP{lay['tp']} PP{lay['pp']} b{lay['batch']}"


def _show_schedule(result: dict[str, Any], name: str | None) -> None:
    t = result["totals"]
    if name:
        typer.echo(f"stored as {name}")
    table = Table(title="schedule (rows where the deployment changes)")
    for col in ("start h", "req/s", "ISL", "mode", "prefill / agg", "decode", "GPUs", "TTFT ms",
                "TPOT ms", "met %"):  # fmt: skip
        table.add_column(col, justify="right")
    last = None
    for iv in result["intervals"]:
        agg = iv.get("agg")
        key = (_layout(agg or iv.get("prefill")), _layout(iv.get("decode")))
        if key == last and not iv.get("violation"):
            continue
        last = key
        met = iv.get("simulated_slo_attainment")
        table.add_row(
            f"{iv['start_s'] / 3600:.2f}",
            f"{iv['requests_per_s']:.2f}",
            f"{iv['mean_isl']:,.0f}",
            iv.get("mode") or "disagg",
            key[0],
            key[1],
            str(iv["gpus"]),
            _fmt(iv.get("predicted_ttft_ms"), ".0f"),
            _fmt(iv.get("predicted_tpot_ms"), ".1f"),
            _fmt(None if met is None else 100 * met, ".2f"),
        )
    show(table)
    restarts = sum(1 for e in result["events"] if e["restart"] and e["action"] == "reconfigure")
    typer.echo(
        f"{len(result['events'])} events ({restarts} layout or mode changes needing a restart); "
        f"peak {t['peak_gpus_in_use']} GPUs in use; {t.get('agg_intervals') or 0} of "
        f"{len(result['intervals'])} intervals aggregated"
    )
    tot = Table(title="totals")
    for col in ("deployment", "GPU-hours", "cost", "SLO met %"):
        tot.add_column(col, justify="right")

    def pct(x: Any) -> str:
        return _fmt(None if x is None else 100 * x, ".3f")

    rows = (
        ("schedule", t["gpu_hours"], t.get("cost"), t.get("slo_attainment")),
        ("static (peak)", t["static_peak_gpu_hours"], t.get("static_peak_cost"),
         t.get("static_peak_slo_attainment")),
        ("static (mean)", t["static_mean_gpu_hours"], None, t.get("static_mean_slo_attainment")),
    )  # fmt: skip
    for label, hours, cost, met in rows:
        tot.add_row(label, f"{hours:.1f}", _fmt(cost, ".2f"), pct(met))
    show(tot)
    for v in t["violations"]:
        typer.echo(f"violation: interval {v['interval']} at {v['start_s']:g} s: {v['reason']}")


def _modes(given: list[str] | None) -> tuple[Mode, ...]:
    """The ``--mode`` values (both modes when none is given)."""
    if not given:
        return ("agg", "disagg")
    out: list[Mode] = []
    for m in given:
        if m not in ("agg", "disagg"):
            raise InvalidInputError("mode", f"must be agg or disagg, got {m!r}")
        if m not in out:
            out.append(m)  # type: ignore[arg-type]
    return tuple(out)


@schedules_app.command("list")
def schedules_list(
    model: Annotated[str | None, typer.Option(help="Only schedules for this model.")] = None,
    page_size: Annotated[int | None, typer.Option(help="Schedules per page.")] = None,
    page_token: Annotated[str | None, typer.Option(help="Token of the page to show.")] = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """List stored schedules, newest first."""
    runner = remote(server)
    with flags(("model", "page_size", "page_token")):
        rows, token = runner.list_schedules(model=model, page_size=page_size, page_token=page_token)
    if json_out:
        show_json({"schedules": rows, "next_page_token": token})
        return
    table = Table(title="schedules")
    for col in ("name", "created", "model", "GPUs", "intervals", "GPU-hours", "SLO met %",
                "violations"):  # fmt: skip
        table.add_column(col)
    for s in rows:
        t, req = s["result"]["totals"], s["request"]
        met = t.get("slo_attainment")
        table.add_row(
            s["name"], s["create_time"], req.get("model", ""), f"{req.get('gpus', '')} x "
            f"{req.get('gpu', '')}", str(len(s["result"]["intervals"])), f"{t['gpu_hours']:.1f}",
            _fmt(None if met is None else 100 * met, ".3f"), str(len(t["violations"])),
        )  # fmt: skip
    show(table)
    if token:
        typer.echo(f"next page: --page-token {token}")


ScheduleId = Annotated[str, typer.Argument(metavar="ID", help="Schedule id or schedules/ID.")]


@schedules_app.command("get")
def schedules_get(
    schedule_id: ScheduleId, json_out: JsonOpt = False, server: ServerOpt = None
) -> None:
    """Show one stored schedule."""
    stored = remote(server).get_schedule(schedule_id)
    if json_out:
        show_json(stored)
    else:
        typer.echo(f"{stored['name']} created {stored['create_time']}")
        _show_schedule(stored["result"], None)


@schedules_app.command("delete")
def schedules_delete(schedule_id: ScheduleId, server: ServerOpt = None) -> None:
    """Delete one stored schedule."""
    typer.echo(f"deleted {remote(server).delete_schedule(schedule_id)}")


@app.command("simulate", no_args_is_help=True)
def simulate_cmd(
    model: ModelOpt = None,
    gpu: GpuOpt = None,
    decode_gpu: DecodeGpuOpt = None,
    trace: TraceOpt = None,
    interval_s: IntervalOpt = 300.0,
    ttft_ms: TtftOpt = None,
    tpot_ms: TpotOpt = None,
    schedule_id: Annotated[
        str | None,
        typer.Option(
            "--schedule",
            metavar="ID",
            help="Replay this stored schedule (needs --server) instead of a fixed deployment.",
        ),
    ] = None,
    startup_s: Annotated[
        float | None,
        typer.Option(
            help="Seconds from launching a worker to serving, of a stored schedule's workers "
            "(default: 300).",
        ),
    ] = None,
    prefill_tp: Annotated[
        int | None, typer.Option(help="Prefill workers' TP (default: 1).")
    ] = None,
    prefill_pp: Annotated[
        int | None, typer.Option(help="Prefill workers' PP (default: 1).")
    ] = None,
    prefill_batch: Annotated[
        int | None, typer.Option(help="Prompts per prefill batch (default: 1).")
    ] = None,
    prefill_workers: Annotated[int | None, typer.Option(help="Prefill workers.")] = None,
    decode_tp: Annotated[int | None, typer.Option(help="Decode workers' TP (default: 1).")] = None,
    decode_pp: Annotated[int | None, typer.Option(help="Decode workers' PP (default: 1).")] = None,
    decode_batch: Annotated[
        int | None, typer.Option(help="Most sequences per decode worker.")
    ] = None,
    decode_workers: Annotated[int | None, typer.Option(help="Decode workers.")] = None,
    seed: SeedOpt = 0,
    dtype: DtypeOpt = None,
    kv_dtype: KvDtypeOpt = None,
    engine: EngineOpt = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Replay a traffic trace through a fixed xPyD deployment or a stored schedule."""
    from pdplanner.planner import validate
    from pdplanner.planner.scaling.capacity import Shape
    from pdplanner.planner.scaling.schedule import (
        ScheduleRequest,
        simulate_spans,
        simulate_xpyd,
        spans_of_intervals,
    )

    v = Violations()
    _required(v, model=model, gpu=gpu, trace=trace, ttft_ms=ttft_ms, tpot_ms=tpot_ms)
    counts = {
        "prefill_tp": prefill_tp, "prefill_pp": prefill_pp, "prefill_batch": prefill_batch,
        "prefill_workers": prefill_workers, "decode_tp": decode_tp, "decode_pp": decode_pp,
        "decode_batch": decode_batch, "decode_workers": decode_workers,
    }  # fmt: skip
    # a stored schedule brings its own workers: a fixed deployment's flags would go unused
    if schedule_id is not None:
        given = [inputs.flag(key) for key, value in counts.items() if value is not None]
        if given:
            v.add(
                "schedule",
                f"replays the stored schedule's workers, so {', '.join(given)} (a fixed "
                "deployment) would be ignored: give one or the other",
            )
    else:  # a fixed deployment: workers and the decode batch given, every count at least 1
        if startup_s is not None:
            v.add("startup_s", "applies to the workers of a --schedule only; a fixed deployment "
                  "serves from the start")  # fmt: skip
        for key, value in counts.items():
            if value is None and key in ("prefill_workers", "decode_batch", "decode_workers"):
                v.add(key, "is required")
            elif value is not None:
                v.value(partial(validate.integer, value, key, 1, validate.MAX_BATCH))
    try:
        v.raise_any()
        assert model is not None and gpu is not None and trace is not None
        assert ttft_ms is not None and tpot_ms is not None
        series = _load(trace, "trace", interval_s)
        req = ScheduleRequest(
            model=model,
            gpu=gpu,
            gpus=2,
            series=series,
            slo=Slo(ttft_ms, tpot_ms, "p99"),
            decode_gpu=decode_gpu,
            startup_s=startup_s if startup_s is not None else DEFAULT_STARTUP_S,
            precision=Precision(dtype or inputs.default_dtype(model), kv_dtype or DEFAULT_DTYPE),
            engine=engine or DEFAULT_ENGINE,
            seed=seed,
        )
        if schedule_id is not None:
            stored = remote(server).get_schedule(schedule_id)
            spans = spans_of_intervals(stored["result"]["intervals"], series, req.startup_s)
            what = stored["name"]
            replay = simulate_spans(req, spans)
        else:
            assert prefill_workers is not None and decode_workers is not None
            assert decode_batch is not None

            def pool(role: str, tp: int | None, pp: int | None, batch: int | None) -> Shape:
                return Shape(role, gpu if role == "prefill" else decode_gpu or gpu, tp or 1,
                             pp or 1, 1, 1, batch or 1)  # fmt: skip

            pshape = pool("prefill", prefill_tp, prefill_pp, prefill_batch)
            dshape = pool("decode", decode_tp, decode_pp, decode_batch)
            replay = simulate_xpyd(req, (pshape, prefill_workers), (dshape, decode_workers))
            what = f"{prefill_workers}P{decode_workers}D"
    except InvalidInputError as exc:
        raise CliError(_describe(exc)) from None
    summary = {"deployment": what, **replay.summary()}
    if json_out:
        show_json(summary)
        return
    typer.echo(
        f"{what}: {summary['requests']:,} requests, SLO (TTFT {ttft_ms:g} ms, TPOT {tpot_ms:g} "
        f"ms) met by {100 * summary['slo_attainment']:.3f}%"
    )
    for key in ("ttft_ms", "tpot_ms"):
        p = summary[key]
        typer.echo(
            f"  {key[:4].upper()}: p50 {_fmt(p['p50'])}  p90 {_fmt(p['p90'])}  "
            f"p99 {_fmt(p['p99'])} ms"
        )

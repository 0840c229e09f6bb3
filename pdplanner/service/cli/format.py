"""Rendering planner results for the terminal: rich tables, JSON and the Pareto plot.

Every function here takes planner result types (or plain dictionaries from them) and returns
something to print; none of them computes a number the planner did not. JSON output is strict:
non-finite floats (an infeasible configuration's infinite TPOT) become ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from pdplanner.planner.catalog import GpuSpec, ModelSpec, gpu_to_entry
from pdplanner.planner.types import (
    Deployment,
    EstimateRequest,
    Parallelism,
    PhaseEstimate,
    PlanRequest,
    PlanResult,
    Pool,
    ServingEstimate,
)

#: How many points of each Pareto frontier the text summary lists (``--json`` has them all).
FRONTIER_ROWS = 12


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats replaced by ``None`` and tuples by lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def dumps(value: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text of ``value`` (see :func:`jsonable`)."""
    return json.dumps(jsonable(value), indent=indent, allow_nan=False)


def num(value: float | None, digits: int = 1) -> str:
    """A number for a table cell: thousands separators, ``-`` for missing, ``inf`` for infinite."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    return f"{value:,.{digits}f}"


def _fits(fits: bool, reason: str | None) -> Text:
    if fits:
        return Text("yes", style="green")
    return Text(f"no: {reason}" if reason else "no", style="red")


def estimate_title(req: EstimateRequest) -> str:
    """What an estimate is of, in one line: model, GPU, traffic, precision and configuration."""
    head = f"{req.model} on {req.gpu}, ISL {req.isl} / OSL {req.osl}, {req.precision.dtype}"
    if req.precision.kv_dtype != req.precision.dtype:
        head += f" (KV {req.precision.kv_dtype})"
    head += f", {req.engine}"
    if req.phase is not None:
        what = f"{req.phase} step, {_par_text(req.parallelism)}, batch {req.batch}"
        if req.phase == "decode" and req.context is not None:
            what += f", context {req.context}"
    elif req.mode == "agg":
        what = f"agg worker, {_par_text(req.parallelism)}, {_load_text(req)}"
        if req.chunk_tokens is not None:
            what += f", chunk {req.chunk_tokens}"
    else:
        pools = [
            (role, spec)
            for role, spec in (("prefill", req.prefill), ("decode", req.decode))
            if spec is not None
        ]
        what = "disagg " + " | ".join(
            f"{role} {spec.workers} x "
            + (f"{spec.gpu} " if spec.gpu is not None else "")
            + f"{_par_text(spec.parallelism)}, batch {spec.batch}"
            for role, spec in pools
        )
        what += f", {_load_text(req)}"
    if req.engine_args:
        what += ", " + ", ".join(f"{k}={v}" for k, v in req.engine_args)
    return f"{head}\n{what}"


def _load_text(req: EstimateRequest) -> str:
    """Which load model the figures mean (README: the serving model and its load)."""
    if req.concurrency is not None:
        return f"closed loop of {req.concurrency} clients (means over the run)"
    if req.rate_per_s is not None:
        return f"Poisson {req.rate_per_s:g} req/s (medians)"
    return "steady state at the rate it sustains"


def _par_text(par: Parallelism) -> str:
    parts = [f"TP{par.tp}"]
    parts += [
        f"{k}{v}" for k, v in (("PP", par.pp), ("EP", par.ep), ("ADP", par.attention_dp)) if v > 1
    ]
    return " ".join(parts)


def _kv_table(title: str, rows: Sequence[tuple[str, str | Text]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("metric", style="bold", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    for label, value in rows:
        table.add_row(label, value)
    return table


def estimate_view(result: PhaseEstimate | ServingEstimate, req: EstimateRequest) -> Group:
    """The text form of ``pdplanner estimate``: what was estimated, then the results table."""
    return Group(
        Text(estimate_title(req), style="bold"),
        *([Text(basis_text(result.model, result.gpu_basis))] if result.model else []),
        estimate_table(result),
    )


def basis_text(model: str, gpu_basis: str) -> str:
    """``model: llama-4-maverick (400.7B total / 17.2B active); GPU figures: datasheet-scaled``."""
    basis = gpu_basis
    if gpu_basis == "datasheet-scaled":
        basis += " (no measured tables for this GPU: H100 efficiencies scaled to its datasheet)"
    return f"model: {model}; GPU figures: {basis}"


def estimate_table(result: PhaseEstimate | ServingEstimate, title: str = "") -> Table:
    """A two-column table of one estimate: a phase step or a serving deployment."""
    # a configuration that does not fit has no latency or throughput: "-", and "fits" says why
    metric = num if result.fits else (lambda value, digits=1: "-")
    if isinstance(result, PhaseEstimate):
        layer = result.per_layer_ms
        what = "prompt" if result.phase == "prefill" else "output"
        # an eager step's host issue time: why the step can exceed its layers' GPU time
        issue = (
            [("host issue, no CUDA graph (ms)", metric(result.host_issue_ms, 3))]
            if result.host_issue_ms > 0
            else []
        )
        return _kv_table(
            title or f"{result.phase} step",
            [
                ("step (ms)", metric(result.step_ms, 3)),
                ("per layer: GEMM (ms)", metric(layer.gemm, 4)),
                ("per layer: attention (ms)", metric(layer.attention, 4)),
                ("per layer: communication (ms)", metric(layer.communication, 4)),
                ("per layer: other (ms)", metric(layer.other, 4)),
                *issue,
                (f"{what} tokens/s/GPU", metric(result.tokens_per_s_per_gpu)),
                ("GPUs", str(result.gpus)),
                ("memory per GPU (GB)", num(result.memory_gb_per_gpu, 2)),
                ("engine memory fraction", num(result.memory_fraction, 3)),
                ("KV cache per DP rank (tokens)", metric(max(result.kv_capacity_tokens, 0.0), 0)),
                ("largest batch that fits", str(result.max_batch) if result.fits else "-"),
                ("fits", _fits(result.fits, result.reason)),
            ],
        )
    # prefill-only traffic (OSL 1): the first token ends the request, nothing is decoded
    decodes = result.tpot_ms > 0.0 or not result.fits
    rows: list[tuple[str, str | Text]] = [
        ("TTFT (ms)", metric(result.ttft_ms, 1)),
        ("TPOT (ms)", metric(result.tpot_ms, 2) if decodes else "- (OSL 1: no decode)"),
        ("tokens/s/GPU", metric(result.tokens_per_s_per_gpu)),
        ("tokens/s/user", metric(result.tokens_per_s_per_user) if decodes else "-"),
        ("requests/s", metric(result.requests_per_s, 3)),
        ("GPUs", str(result.gpus)),
        ("memory per GPU (GB)", num(result.memory_gb_per_gpu, 2)),
    ]
    optional = [
        ("running batch", result.running_batch, 1),
        ("queued requests", result.queued, 1),
        ("KV transfer (GB/s per prefill GPU)", result.kv_transfer_gb_per_s_per_gpu, 2),
        ("KV transfer charged to TTFT (ms)", result.kv_transfer_ms, 2),
    ]
    rows += [(label, metric(v, d)) for label, v, d in optional if v is not None]
    offered = result.details.get("offered_requests_per_s")
    if isinstance(offered, (int, float)) and result.fits:
        kept_up = result.details.get("sustained") is True
        rows.append(("offered requests/s", num(float(offered), 3)))
        rows.append((
            "keeps up with the offered rate",
            "yes" if kept_up else Text("no: the queue grows for as long as the run lasts",
                                       style="bold red"),
        ))  # fmt: skip
    fraction = result.details.get("memory_fraction")
    if isinstance(fraction, dict):
        rows.append(("engine memory fraction (prefill / decode)",
                     f"{fraction['prefill']:.3f} / {fraction['decode']:.3f}"))  # fmt: skip
    elif isinstance(fraction, float):
        rows.append(("engine memory fraction", f"{fraction:.3f}"))
    rows.append(("fits", _fits(result.fits, result.reason)))
    return _kv_table(title or f"{result.mode} deployment", rows)


def pool_text(pool: Pool) -> str:
    """``2 x h100-sxm TP4 PP2, batch 8``: one pool of a deployment, compactly."""
    parts = [f"TP{pool.tp}"]
    parts += [
        f"{k}{v}"
        for k, v in (("PP", pool.pp), ("EP", pool.ep), ("ADP", pool.attention_dp))
        if v > 1
    ]
    text = f"{pool.workers} x {pool.gpu} {' '.join(parts)}, batch {pool.batch}"
    if pool.chunk_tokens is not None:
        text += f", chunk {pool.chunk_tokens}"
    return text


def deployment_text(dep: Deployment) -> str:
    """The pools of a deployment, prefill first: ``prefill 2 x ... | decode 1 x ...``.

    An agg deployment's single pool is shown without its role.
    """
    if len(dep.pools) == 1:
        return pool_text(dep.pools[0])
    order = {"prefill": 0, "decode": 1, "agg": 2}
    pools = sorted(dep.pools, key=lambda p: order[p.role])
    return " | ".join(f"{p.role} {pool_text(p)}" for p in pools)


def _deployment_columns(table: Table) -> None:
    for name in ("GPUs", "TTFT ms", "TPOT ms", "tok/s/GPU", "tok/s/user", "req/s"):
        table.add_column(name, justify="right", overflow="fold")


def _deployment_cells(dep: Deployment) -> list[str]:
    decodes = dep.tpot_ms > 0.0  # prefill-only traffic (OSL 1) decodes nothing
    return [
        str(dep.gpus),
        num(dep.ttft_ms, 1),
        num(dep.tpot_ms, 2) if decodes else "-",
        num(dep.tokens_per_s_per_gpu),
        num(dep.tokens_per_s_per_user) if decodes else "-",
        num(dep.requests_per_s, 3),
    ]


def _spread(points: Sequence[Deployment], n: int) -> list[Deployment]:
    """At most ``n`` points spread evenly along a frontier, keeping both ends."""
    if len(points) <= n:
        return list(points)
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


def plan_summary(
    result: PlanResult, name: str | None = None, modes: Collection[str] = ("agg", "disagg")
) -> RenderableType:
    """The text form of ``pdplanner plan``: the recommendation, the two bests, the frontiers.
    ``modes`` are the serving modes the request searched: a mode it left out gets no row, and
    with one mode there is no speedup to show."""
    parts: list[RenderableType] = []
    if name:
        parts.append(Text(f"stored as {name}", style="bold"))
    if result.best is not None:
        parts.append(
            Text.assemble(
                ("best: ", "bold"),
                (result.best.mode, "bold green"),
                f"  {deployment_text(result.best)}",
            )
        )
    else:
        parts.append(
            Text(
                (
                    "the GPU budget does not serve the rate: "
                    if result.rate_served is False
                    else "no configuration meets the SLO: "
                )
                + (result.reason or "unknown reason"),
                style="bold red",
            )
        )
        if result.for_rate is not None:
            parts.append(
                Text.assemble(
                    ("fewest GPUs for the rate: ", "bold"),
                    f"{result.for_rate.gpus} ({result.for_rate.mode})  "
                    f"{deployment_text(result.for_rate)}",
                )
            )
    if result.explanation:
        parts.append(Text(result.explanation))
    if result.model:
        parts.append(Text(basis_text(result.model, result.gpu_basis)))
    if result.load:
        parts.append(Text(f"load model: {result.load}", style="dim"))
    table = Table(title="best deployment per mode", title_justify="left")
    table.add_column("mode", overflow="fold")
    table.add_column("pools", overflow="fold")
    table.add_column("P:D GPUs (exact)", justify="right", overflow="fold")
    _deployment_columns(table)
    bests = (("agg", result.best_agg), ("disagg", result.best_disagg))
    rows = [(mode, dep) for mode, dep in bests if mode in modes]
    if result.best is None and result.closest is not None:
        rows.append(("closest miss", result.closest))
    for label, dep in rows:
        if dep is None:
            table.add_row(label, "no feasible deployment", *["-"] * 7)
            continue
        star = " *" if dep == result.best else ""
        ratio = num(dep.prefill_decode_gpu_ratio, 2) if dep.prefill_decode_gpu_ratio else "-"
        if dep.balanced_gpu_ratio is not None:
            ratio = f"{ratio} ({num(dep.balanced_gpu_ratio, 2)})"  # whole workers (exact balance)
        table.add_row(f"{label}{star}", deployment_text(dep), ratio, *_deployment_cells(dep))
    parts.append(table)
    speedup = ""  # one mode searched: nothing to compare
    if {"agg", "disagg"} <= set(modes):
        ratio = "n/a" if result.disagg_speedup is None else f"{result.disagg_speedup:.2f}x"
        speedup = f"disagg speedup over agg: {ratio}   "
    parts.append(
        Text(
            f"{speedup}design points: {result.design_points:,}"
            f"   search: {num(result.elapsed_ms, 1)} ms"
        )
    )
    for mode, points in (("agg", result.pareto_agg), ("disagg", result.pareto_disagg)):
        if not points:
            continue
        shown = _spread(points, FRONTIER_ROWS)
        title = f"{mode} Pareto frontier ({len(points)} points"
        title += f", {len(shown)} shown; --json lists all)" if len(shown) < len(points) else ")"
        frontier = Table(title=title, title_justify="left")
        frontier.add_column("pools", overflow="fold")
        _deployment_columns(frontier)
        for dep in shown:
            frontier.add_row(deployment_text(dep), *_deployment_cells(dep))
        parts.append(frontier)
    return Group(*parts)


@dataclass(frozen=True)
class StoredPlan:
    """A plan as a server stores it: its resource name, when, the request and the result."""

    name: str  # plans/{id}
    create_time: str  # ISO 8601, UTC
    request: PlanRequest
    result: PlanResult
    planner_version: str
    search_ms: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``pdplanner plans get --json``: name, metadata, request and result."""
        from pdplanner.planner.serialize import to_json

        return {
            "name": self.name,
            "create_time": self.create_time,
            "planner_version": self.planner_version,
            "search_ms": self.search_ms,
            "request": to_json(self.request),
            "result": self.result.to_dict(),
        }


def traffic_text(req: PlanRequest) -> str:
    """``4000/500`` for one traffic point, ``mix of 3`` for several."""
    if len(req.traffic) == 1:
        return f"{req.traffic[0].isl}/{req.traffic[0].osl}"
    return f"mix of {len(req.traffic)}"


def stored_plan_header(plan: StoredPlan) -> Text:
    """What a stored plan was asked: model, GPUs, traffic, SLO; and when and by which planner."""
    req = plan.request
    gpus = f"{req.gpus} x {req.gpu}" + (f" (decode on {req.decode_gpu})" if req.decode_gpu else "")
    return Text(
        f"{plan.name}  created {plan.create_time}  planner {plan.planner_version}\n"
        f"{req.model} on {gpus}, ISL/OSL {traffic_text(req)}, TTFT {req.slo.ttft_ms:g} ms, "
        f"TPOT {req.slo.tpot_ms:g} ms ({req.slo.percentile}), {req.precision.dtype}, {req.engine}"
    )


def plans_table(plans: Sequence[StoredPlan]) -> Table:
    """One line per stored plan, newest first as the server lists them."""
    table = Table(title="plans", title_justify="left")
    for name, justify in (
        ("name", "left"),
        ("created", "left"),
        ("model", "left"),
        ("GPUs", "left"),
        ("ISL/OSL", "right"),
        ("TTFT/TPOT ms", "right"),
        ("best", "left"),
        ("tok/s/GPU", "right"),
        ("disagg speedup", "right"),
    ):
        if name == "name":
            # a resource name is copied into the next command: never wrapped or cut; the other
            # columns give way on a narrow terminal
            longest = max((len(p.name) for p in plans), default=4)
            table.add_column(name, no_wrap=True, min_width=longest)
            continue
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for p in plans:
        req, best = p.request, p.result.best
        speedup = p.result.disagg_speedup
        table.add_row(
            p.name, p.create_time, req.model, f"{req.gpus} x {req.gpu}", traffic_text(req),
            f"{req.slo.ttft_ms:g}/{req.slo.tpot_ms:g}",
            best.mode if best else Text("none meets the SLO", style="yellow"),
            num(best.tokens_per_s_per_gpu) if best else "-",
            f"{speedup:.2f}x" if speedup is not None else "-",
        )  # fmt: skip
    return table


def sweeps_table(rows: Sequence[tuple[str, str, str, int, int]]) -> Table:
    """One line per stored sweep: name, when, state and scenarios done of all."""
    table = Table(title="sweeps", title_justify="left")
    table.add_column("name", no_wrap=True, min_width=max((len(r[0]) for r in rows), default=4))
    for name, justify in (("created", "left"), ("state", "left"), ("scenarios done", "right")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for name, created, state, done, total in rows:
        table.add_row(name, created, state, f"{done:,} of {total:,}")
    return table


def model_entry(spec: ModelSpec) -> dict[str, Any]:
    """A model for ``pdplanner models --json``: its architecture and parameter counts."""
    entry = asdict(spec)
    entry["aliases"] = list(spec.aliases)
    entry["total_params"] = spec.total_params
    entry["active_params"] = spec.active_params
    return entry


def models_table(specs: Iterable[ModelSpec]) -> Table:
    """The model catalog: size, shape, attention and experts."""
    table = Table(title="models", title_justify="left")
    for name, justify in (
        ("name", "left"),
        ("params (B)", "right"),
        ("active (B)", "right"),
        ("layers", "right"),
        ("hidden", "right"),
        ("heads/kv", "right"),
        ("attention", "left"),
        ("experts", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for s in specs:
        experts = (
            f"{s.num_experts} (top {s.experts_per_token}"
            f"{f', +{s.num_shared_experts} shared' if s.num_shared_experts else ''})"
            if s.is_moe
            else "-"
        )
        table.add_row(
            s.name,
            num(s.total_params / 1e9),
            num(s.active_params / 1e9),
            str(s.num_layers),
            str(s.hidden_size),
            f"{s.num_heads}/{s.num_kv_heads}",
            attention_text(s),
            experts,
        )
    return table


def attention_text(s: ModelSpec) -> str:
    """``gqa, window 128 on 18 layers``: the attention kind and its variants."""
    parts: list[str] = [s.attention]
    if s.num_window_layers:
        parts.append(f"window {s.sliding_window} on {s.num_window_layers} layers")
    if s.num_linear_layers:
        parts.append(f"linear on {s.num_linear_layers} layers")
    if s.index_topk:
        parts.append(f"sparse top-{s.index_topk}")
    if s.quantization:
        parts.append(s.quantization)
    return ", ".join(parts)


def gpu_entry(spec: GpuSpec) -> dict[str, Any]:
    """A GPU for ``pdplanner gpus --json``: the catalog data-file form."""
    return gpu_to_entry(spec)


def gpus_table(specs: Iterable[GpuSpec]) -> Table:
    """The GPU catalog: dense tensor-core peaks, memory and links."""
    table = Table(title="GPUs", title_justify="left")
    table.add_column("name", overflow="fold")
    for name in (
        "BF16 TFLOP/s",
        "FP8 TFLOP/s",
        "FP4 TFLOP/s",
        "memory GB (reported)",
        "HBM TB/s",
        "NVLink GB/s",
        "NVLink domain",
        "scale-out GB/s",
    ):
        table.add_column(name, justify="right", overflow="fold")
    table.add_column("figures", overflow="fold")
    for g in specs:
        rates = [
            num(g.flops_per_s(d) / 1e12, 0) if g.supports(d) else "-"
            for d in ("bf16", "fp8", "fp4")
        ]
        table.add_row(
            g.name,
            *rates,
            num(g.hbm_bytes / 1e9, 0),
            num(g.hbm_bytes_per_s / 1e12, 2),
            num(g.nvlink_bytes_per_s / 1e9, 0),
            str(g.nvlink_domain_size),
            num(g.scaleout_bytes_per_s / 1e9, 0),
            g.model_basis,
        )
    return table


def sweep_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """One line per sweep scenario: its inputs and the best deployment found (or the error)."""
    table = Table(title="sweep", title_justify="left")
    for name, justify in (
        ("model", "left"),
        ("GPU", "left"),
        ("ISL/OSL", "right"),
        ("TTFT ms", "right"),
        ("TPOT ms", "right"),
        ("best", "left"),
        ("tok/s/GPU", "right"),
        ("tok/s/user", "right"),
        ("disagg speedup", "right"),
        ("design points", "right"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        head = [
            str(row["model"]),
            str(row["gpu"]),
            f"{row['isl']}/{row['osl']}",
            num(row["ttft_ms"], 0),
            num(row["tpot_ms"], 1),
        ]
        if "error" in row:
            table.add_row(*head, Text(f"error: {row['error']}", style="red"), "-", "-", "-", "-")
            continue
        result: dict[str, Any] = row["result"]
        best = result.get("best")
        speedup = result.get("disagg_speedup")
        table.add_row(
            *head,
            best["mode"] if best else Text("none meets the SLO", style="yellow"),
            num(best["tokens_per_s_per_gpu"]) if best else "-",
            num(best["tokens_per_s_per_user"]) if best else "-",
            f"{speedup:.2f}x" if speedup is not None else "-",
            f"{result.get('design_points', 0):,}",
        )
    return table


def plot_frontiers(result: PlanResult, path: str, title: str = "") -> None:
    """Draw both Pareto frontiers (tokens/s/user on x, tokens/s/GPU on y), marking the best.

    matplotlib is imported here, with the non-interactive Agg backend, so that the CLI starts
    without it and works where it is not installed unless ``--plot`` is given.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for mode, points, style in (
            ("agg", result.pareto_agg, "o-"),
            ("disagg", result.pareto_disagg, "s-"),
        ):
            if points:
                pts = sorted(points, key=lambda d: d.tokens_per_s_per_user)
                ax.plot(
                    [d.tokens_per_s_per_user for d in pts],
                    [d.tokens_per_s_per_gpu for d in pts],
                    style,
                    markersize=3,
                    label=mode,
                )
        if result.best is not None:
            ax.plot(
                [result.best.tokens_per_s_per_user],
                [result.best.tokens_per_s_per_gpu],
                "*",
                markersize=16,
                color="crimson",
                label=f"chosen ({result.best.mode})",
                zorder=5,
            )
        ax.set_xlabel("tokens/s/user")
        ax.set_ylabel("tokens/s/GPU")
        if title:
            ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)

"""The measured serving runs of ``shared/serving-runs/runs.csv`` and the planner's prediction of
each (imported by ``test_serving_accuracy.py``; ``tests/`` has no ``__init__.py``).

How a row becomes a simulation, with the assumptions the source leaves open:

* Load: a closed loop of ``concurrency`` clients starting together, fixed lengths, ``k``
  requests per client (``k`` is the calibrated ``REQUESTS_PER_CLIENT``); figures are means over
  every request of the run (benchmark clients report means; the README of the runs says
  "averaged by the benchmark").
* Scheduler: the engine's defaults (engines.yaml) with ``max_num_seqs`` and ``cuda_graph_max_bs``
  set to the row's ``batch_size`` (per attention-DP rank): the runs' generator writes the batch
  size into the engine's batch limit and CUDA-graph list, so the row's batch is a limit, not the
  number of clients. A prefill pool's token budget is at least its batch of whole prompts; an
  aggregated TensorRT-LLM or vLLM worker's is the generator's batch + ISL + 1500
  (``agg_token_budget``, with the evidence). The engines' overlap schedulers (TensorRT-LLM,
  SGLang) are on, as their defaults and the generator leave them (engines.yaml).
* Agg replicas: where the concurrency is several times the batch, the clients were spread over
  that many identical workers (``agg_replicas``); each is simulated with its share.
* Precision: ``fp8``/``fp8_block`` GEMMs run fp8, ``nvfp4`` fp4, empty bf16; the KV cache is fp8
  where the GEMMs are fp8 or fp4, else bf16 (the generator quantises the KV cache with the
  weights; not stated by the source).
* Disaggregated KV transfer: between the pools over the scale-out link (separate nodes).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pdplanner.planner.catalog import default_gpus, default_models, load_engine
from pdplanner.planner.errors import PlannerError
from pdplanner.planner.perf.params import (
    H_EP_ALLTOALL_FLOOR_MS,
    H_PEAK,
    QUANTIZED_GEMM_EFFICIENCY,
    PerfContext,
)
from pdplanner.planner.serving.scheduler import SchedulerSettings, scheduler_for
from pdplanner.planner.serving.simulate import (
    ClosedLoop,
    Pool,
    ServingRun,
    _one_request_ms,
    simulate_agg,
    simulate_disagg,
)
from pdplanner.planner.types import Parallelism

RUNS = Path(__file__).resolve().parents[3] / "shared" / "serving-runs" / "runs.csv"
if not RUNS.exists():
    RUNS = Path("/work/shared/serving-runs/runs.csv")

MODEL_NAMES = {"nvidia/Qwen3-32B-NVFP4": "qwen3-32b"}
DTYPES = {"": "bf16", "fp8": "fp8", "fp8_block": "fp8", "nvfp4": "fp4"}


@dataclass(frozen=True)
class Run:
    line: int
    engine: str
    version: str
    model: str
    system: str
    mode: str
    isl: int
    osl: int
    dtype: str
    concurrency: int
    row: dict[str, str]
    ttft_ms: float
    tpot_ms: float

    @property
    def group(self) -> str:
        return f"{self.engine} {self.mode} {self.system}"

    @property
    def model_family(self) -> str:
        """The catalog's name of the row's model, so that one model's checkpoints (Qwen3-32B
        in bf16 and NVIDIA's NVFP4 release) are left out together; the row's own name where the
        catalog has none."""
        try:
            return default_models().get(self.model, "model").name
        except PlannerError:
            return self.model


def load_runs() -> list[Run]:
    out = []
    with RUNS.open() as f:
        for i, r in enumerate(csv.DictReader(f), start=2):
            if not r["concurrency"]:
                continue
            out.append(
                Run(
                    i,
                    r["backend"],
                    r["backend_version"],
                    MODEL_NAMES.get(r["model_path"], r["model_path"]),
                    r["system"],
                    r["mode"],
                    int(r["isl"]),
                    int(r["osl"]),
                    DTYPES[r["gemm_quant_mode"]],
                    int(r["concurrency"]),
                    r,
                    float(r["ttft_ms"]),
                    float(r["tpot_ms"]),
                )
            )
    return out


def _int(row: dict[str, str], key: str, default: int = 1) -> int:
    v = row.get(key, "")
    return int(float(v)) if v not in ("", None) and float(v) > 0 else default


def layout(row: dict[str, str], prefix: str) -> tuple[Parallelism, int]:
    """A row's worker layout and batch (per attention-DP rank) for pool ``prefix`` ("", "prefill_"
    or "decode_")."""
    tp = _int(row, f"{prefix}tp_size")
    pp = _int(row, f"{prefix}pp_size")
    dp = _int(row, f"{prefix}attention_dp_size")
    ep = _int(row, f"{prefix}moe_ep_size")
    moe_group = _int(row, f"{prefix}moe_tp_size") * ep
    if moe_group > tp * dp and moe_group % tp == 0 and not row.get(f"{prefix}attention_dp_size"):
        # An MoE layer spread over more GPUs than the attention's TP group: the rest are
        # attention data-parallel ranks. The source's layouts keep tp * attention_dp ==
        # moe_tp * moe_ep per stage; 19 vLLM 0.12 rows on H200 leave attention_dp empty with
        # moe_tp 2 or 4 over tp 1 or 2, which vLLM runs as --data-parallel-size with the experts
        # tensor-parallel over all DP x TP ranks (vLLM 0.12 docs, "Data Parallel Deployment":
        # expert layers form a DP x TP sized tensor-parallel group by default). Read as one
        # attention group, 13 of them would be one GPU holding 235 GB of weights.
        dp = moe_group // tp
    return Parallelism(tp=tp, pp=pp, ep=ep, attention_dp=dp), _int(row, f"{prefix}batch_size")


def _sched(engine_name: str, batch: int) -> SchedulerSettings:
    s = scheduler_for(load_engine(engine_name))
    return replace(s, max_num_seqs=batch, cuda_graph_max_bs=batch)


# Tokens of headroom the runs' generator adds to an aggregated worker's token budget (below).
GENERATOR_BUDGET_SLACK = 1500


def agg_token_budget(run: Run, batch: int) -> int | None:
    """The token budget per iteration of an aggregated run's engine; None: the engine's default.

    The runs come from AIConfigurator, whose configuration generator writes the budget of an
    aggregated TensorRT-LLM or vLLM worker as batch + ISL + 1500 (``max_num_tokens``,
    ``--max-num-batched-tokens``): ai-dynamo/aiconfigurator ``cli/backends/trtllm.py`` in its
    first release (2025-08, the TensorRT-LLM 1.0 rows) and ``generator/rule_plugin/trtllm.rule``
    and ``vllm.rule`` since (``agg max_num_tokens = max_batch_size + isl + 1500``). So one prompt
    and a little more enter an iteration, not a whole wave of them: with the engines' default
    8192 the vLLM rows of 8-16 clients with 1k-token prompts come out 2-3.5x too high (the
    synchronised wave shares one iteration), with this budget within 10-40%. SGLang's rows keep
    the engine's defaults: the generator's SGLang rule (``max_prefill_tokens = isl + 1500``,
    ``enable_mixed_chunk``) raises their TTFT error from 16% to 73% on H100, while their
    measured TTFTs (a 16-client wave of 1k prompts on TP2: 0.8 s, about the whole wave's
    prefill) are what SGLang's default prefill-first batches of up to 8192 tokens give."""
    if run.engine in ("trtllm", "vllm"):
        return batch + run.isl + GENERATOR_BUDGET_SLACK
    return None


def agg_replicas(run: Run, par: Parallelism, batch: int) -> int:
    """Workers an agg run spread its clients over. The source gives no worker count for agg
    rows; where the concurrency is a multiple of the batch over every rank (the TensorRT-LLM
    GB200/B200 rows: 416 clients at batch 13 = 32 TP2 workers of an NVL72 rack; 288 at 144 = 2)
    the run used that many replicas, each holding a batch of clients: their measured TTFTs
    (0.7 s for 15k-token prompts) rule out one worker queueing them all."""
    per_worker = batch * par.attention_dp
    return max(1, round(run.concurrency / per_worker)) if run.concurrency > per_worker else 1


def predict(
    run: Run,
    requests_per_client: float,
    synchronised: bool = True,
    quant_eff: float | None = None,
    eager_ms: float | None = None,
    eager_engines: tuple[str, ...] | None = None,
    a2a_ms: float | None = None,
) -> ServingRun | str:
    """The planner's figures for ``run`` (a string: why it cannot be predicted). ``quant_eff``
    replaces ``QUANTIZED_GEMM_EFFICIENCY`` for a fp8/fp4 row, ``eager_ms`` the
    ``eager_layer_host_ms`` of the engines named in ``eager_engines`` (default: those whose
    catalog entry has one; ``tools/fit_serving.py`` fits both) and ``a2a_ms`` the fixed cost of
    an expert-parallel dispatch or combine (``EP_ALLTOALL_FLOOR_MS``)."""
    try:
        model = default_models().get(run.model, "model")
        gpu = default_gpus().get(run.system, "gpu")
    except PlannerError as e:
        return str(e)
    engine = load_engine(run.engine)
    if eager_ms is not None and (
        run.engine in eager_engines if eager_engines is not None else engine.eager_layer_host_ms > 0
    ):
        engine = replace(engine, eager_layer_host_ms=eager_ms)
    kv = "fp8" if run.dtype in ("fp8", "fp4") else "bf16"
    try:
        ctx = PerfContext.build(model, gpu, engine, run.dtype, kv)
    except PlannerError as e:
        return str(e)
    hv = ctx.hv.copy()
    if quant_eff is not None and run.dtype != "bf16":
        hv[H_PEAK] *= quant_eff / QUANTIZED_GEMM_EFFICIENCY
    if a2a_ms is not None:
        hv[H_EP_ALLTOALL_FLOOR_MS] = a2a_ms
    ctx = replace(ctx, hv=hv)
    load = ClosedLoop(run.concurrency, requests_per_client, synchronised)
    isl, osl = np.array([float(run.isl)]), np.array([float(run.osl)])
    if run.mode == "agg":
        par, batch = layout(run.row, "")
        clients = math.ceil(run.concurrency / agg_replicas(run, par, batch))
        load = ClosedLoop(clients, requests_per_client, synchronised)
        sched = _sched(run.engine, batch)
        budget = agg_token_budget(run, batch)
        if budget is not None:
            sched = replace(sched, max_num_batched_tokens=budget)
        return simulate_agg(ctx, par, sched, load, isl, osl)
    p_par, p_batch = layout(run.row, "prefill_")
    d_par, d_batch = layout(run.row, "decode_")
    p_sched = _sched(run.engine, p_batch)
    budget = max(p_sched.max_num_batched_tokens, p_batch * run.isl)
    p_sched = replace(p_sched, max_num_batched_tokens=budget)
    prefill = Pool(ctx, p_par, _int(run.row, "prefill_num_workers"), p_sched)
    y = _int(run.row, "decode_num_workers")
    d_sched = _sched(run.engine, d_batch)
    decode = Pool(ctx, d_par, y, d_sched)
    return simulate_disagg(prefill, decode, load, isl, osl, gpu.scaleout_bytes_per_s)


def abs_pct(pred: float, meas: float) -> float:
    return abs(pred - meas) / meas * 100.0 if meas > 0 else math.inf


def decode_slots(run: Run) -> tuple[int, int]:
    """(decode ranks, request slots) of a disagg row: workers x attention-DP ranks, times the
    per-rank batch. Every disagg row's concurrency equals its slots: AIConfigurator's benchmark
    rule sets the client count to decode workers x batch (``generator/rule_plugin/benchmark/
    sglang.rule``, ``estimated_concurrency``), so the decode pool runs exactly full."""
    par, batch = layout(run.row, "decode_")
    ranks = _int(run.row, "decode_num_workers") * par.attention_dp
    return ranks, ranks * batch


def prefill_backlog_ms(run: Run) -> float | None:
    """Time (ms) the row's prefill pool needs for one prompt from every client at the modelled
    step (one prompt per attention-DP rank, the rows' prefill batch): in a closed loop no more
    than ``concurrency`` prompts ever wait, so a TTFT far above this cannot come from prefill
    queueing. None for agg rows or where the row cannot be priced."""
    if run.mode != "disagg":
        return None
    try:
        model = default_models().get(run.model, "model")
        gpu = default_gpus().get(run.system, "gpu")
        kv = "fp8" if run.dtype in ("fp8", "fp4") else "bf16"
        ctx = PerfContext.build(model, gpu, load_engine(run.engine), run.dtype, kv)
    except PlannerError:
        return None
    par, _ = layout(run.row, "prefill_")
    ranks = _int(run.row, "prefill_num_workers") * par.attention_dp
    one = _one_request_ms(ctx, par, float(run.isl), 0.0, 1.0)
    return run.concurrency * one / ranks

"""The planner's public request and result types: frozen dataclasses, JSON-ready via ``to_dict``.

These are the contract between the planner and everything around it (CLI, gRPC conversion, storage).
Units are in the field names. Validation of requests lives in ``pdplanner/planner/validate.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final, Literal

Phase = Literal["prefill", "decode"]
Mode = Literal["agg", "disagg"]
Percentile = Literal["p50", "p90", "p99"]

#: The precision of weights, activations and KV cache when a request names none.
DEFAULT_DTYPE: Final = "bf16"
#: The serving engine profile when a request names none.
DEFAULT_ENGINE: Final = "vllm"


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class Parallelism:
    """How one worker (one model replica) spreads over GPUs.

    A worker has ``tp * pp * attention_dp`` GPUs: ``pp`` pipeline stages, each of
    ``tp * attention_dp`` GPUs. Attention runs as ``attention_dp`` data-parallel groups of ``tp``
    GPUs; a mixture-of-experts FFN spreads its experts over ``ep`` GPUs of the stage (expert
    tensor parallelism ``tp * attention_dp / ep`` for the rest). Dense models use attention_dp 1.
    """

    tp: int = 1
    pp: int = 1
    ep: int = 1
    attention_dp: int = 1

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.attention_dp


@dataclass(frozen=True)
class Workload:
    """Traffic: one (isl, osl) pair, or a weighted mix of them."""

    isl: int
    osl: int
    weight: float = 1.0


@dataclass(frozen=True)
class Precision:
    dtype: str = DEFAULT_DTYPE  # weights and activations of the GEMMs: bf16, fp8, fp4
    kv_dtype: str = DEFAULT_DTYPE  # KV cache: bf16 or fp8


@dataclass(frozen=True)
class PoolSpec:
    """A pool of identical workers in a fixed deployment (``pdplanner estimate --mode disagg``)."""

    parallelism: Parallelism
    workers: int = 1
    batch: int = 1  # sequences (decode) or prompts (prefill) per worker batch
    gpu: str | None = None  # GPU type of this pool; None: the request's gpu


@dataclass(frozen=True)
class EstimateRequest:
    """One fixed configuration: a single phase step, an agg worker, or an xPyD deployment."""

    model: str
    gpu: str
    isl: int
    osl: int
    precision: Precision = Precision()
    engine: str = DEFAULT_ENGINE
    phase: Phase | None = None  # set for a single prefill or decode step
    mode: Mode | None = None  # set for a whole deployment
    parallelism: Parallelism = Parallelism()  # phase and agg
    batch: int | None = None  # phase
    context: int | None = None  # decode phase: cached tokens per sequence (default isl + osl/2)
    concurrency: int | None = None  # closed loop: benchmark clients, each one request in flight
    chunk_tokens: int | None = None  # agg: chunked-prefill token budget (default: engine's)
    prefill: PoolSpec | None = None  # disagg
    decode: PoolSpec | None = None  # disagg
    # the engine's memory fraction (vLLM gpu_memory_utilization, SGLang mem_fraction_static,
    # TensorRT-LLM free_gpu_memory_fraction); None: the engine's default
    memory_fraction: float | None = None
    rate_per_s: float | None = None  # Poisson load: open-loop arrivals per second
    # engine scheduler overrides (planner.serving.scheduler: max_num_batched_tokens, ...)
    engine_args: tuple[tuple[str, int | float | bool | str], ...] = ()


@dataclass(frozen=True)
class LayerBreakdown:
    """Milliseconds of one decoder layer on one GPU, by kind of work."""

    gemm: float
    attention: float
    communication: float
    other: float


@dataclass(frozen=True)
class PhaseEstimate:
    """One prefill or decode step of one worker."""

    phase: Phase
    step_ms: float
    per_layer_ms: LayerBreakdown
    memory_gb_per_gpu: float
    fits: bool
    reason: str | None = None
    gpus: int = 1
    tokens_per_s_per_gpu: float = 0.0  # prompt tokens (prefill) or output tokens (decode)
    kv_capacity_tokens: float = 0.0  # per attention-DP rank; negative: the weights do not fit
    max_batch: int = 0  # largest batch whose KV cache fits at this context (whole worker)
    model: str = ""  # the model's name, total and active parameters, quantization
    gpu_basis: str = ""  # "calibrated" (measured tables of this GPU) or "datasheet-scaled"
    # the engine's memory fraction the KV cache is sized at: the request's, else the engine's
    # default (SGLang's derived for this GPU and layout); serving estimates give theirs in details
    memory_fraction: float = 0.0
    # the host's time to issue every layer of a step that runs without CUDA graphs (ms;
    # EngineSpec.eager_layer_host_ms per layer): the step takes at least this. 0: a replay.
    host_issue_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


@dataclass(frozen=True)
class ServingEstimate:
    """A serving deployment's steady-state metrics (agg worker or xPyD disagg deployment)."""

    mode: Mode
    ttft_ms: float
    tpot_ms: float
    tokens_per_s_per_gpu: float
    tokens_per_s_per_user: float
    requests_per_s: float
    gpus: int
    memory_gb_per_gpu: float
    fits: bool
    reason: str | None = None
    running_batch: float | None = None  # agg: mean sequences decoding per step
    queued: float | None = None  # mean requests waiting for admission or prefill
    kv_transfer_gb_per_s_per_gpu: float | None = None  # disagg: egress per prefill GPU
    kv_transfer_ms: float | None = None  # disagg: non-overlapped transfer charged to TTFT
    details: dict[str, Any] = field(default_factory=dict)
    model: str = ""  # the model's name, total and active parameters, quantization
    gpu_basis: str = ""  # "calibrated" (measured tables of this GPU) or "datasheet-scaled"

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


@dataclass(frozen=True)
class Slo:
    """Latency targets. ``percentile`` says which point of the distribution must meet them."""

    ttft_ms: float
    tpot_ms: float
    percentile: Percentile = "p50"
    min_tokens_per_s_per_user: float | None = None


@dataclass(frozen=True)
class SearchLimits:
    max_tp: int | None = None  # default: the GPU's NVLink domain (search.enumerate says why)
    allow_pp: bool = True
    allow_ep: bool = True
    allow_attention_dp: bool = True
    modes: tuple[Mode, ...] = ("agg", "disagg")


@dataclass(frozen=True)
class PlanRequest:
    """``pdplanner plan``: search every sensible deployment for this traffic and SLO."""

    model: str
    gpu: str
    gpus: int  # total GPU budget
    traffic: tuple[Workload, ...]
    slo: Slo
    decode_gpu: str | None = None  # heterogeneous disagg: the decode pool's GPU type
    prefill_gpus: int | None = None  # per-pool limits (disagg)
    decode_gpus: int | None = None
    rate_per_s: float | None = None  # offered request rate, when known
    prefix_hit: float = 0.0  # fraction of prompt tokens served from the prefix cache
    precision: Precision = Precision()
    engine: str = DEFAULT_ENGINE
    limits: SearchLimits = SearchLimits()
    memory_fraction: float | None = None  # the engine's memory fraction; None: its default
    # engine scheduler overrides (planner.serving.scheduler: max_num_batched_tokens, ...)
    engine_args: tuple[tuple[str, int | float | bool | str], ...] = ()


@dataclass(frozen=True)
class Pool:
    """One pool of a recommended deployment."""

    role: Literal["prefill", "decode", "agg"]
    gpu: str
    tp: int
    pp: int
    ep: int
    attention_dp: int
    batch: int  # prompts per prefill batch, sequences per decode/agg worker
    workers: int
    chunk_tokens: int | None = None  # agg: chunked-prefill budget (None: no chunking)

    @property
    def gpus_per_worker(self) -> int:
        return self.tp * self.pp * self.attention_dp


@dataclass(frozen=True)
class Deployment:
    """A candidate deployment and what the model predicts for it.

    With a target rate the figures are at that rate (``requests_per_s`` is the rate served);
    without one, at the deployment's capacity. ``ttft_ms`` and ``tpot_ms`` are at the SLO's
    percentile: TTFT includes the Poisson queueing wait; a disagg TPOT is the decode pool's step
    time (no prefill interference, the same at every percentile), an agg TPOT the percentile of
    requests' TPOT in the aggregated simulation."""

    mode: Mode
    pools: tuple[Pool, ...]
    ttft_ms: float
    tpot_ms: float
    tokens_per_s_per_gpu: float
    tokens_per_s_per_user: float
    requests_per_s: float
    gpus: int
    prefill_decode_gpu_ratio: float | None = None  # disagg only
    kv_transfer_gb_per_s_per_gpu: float | None = None
    # disagg: the GPU ratio that balances the two configurations exactly, before whole workers
    balanced_gpu_ratio: float | None = None
    # prompt tokens/s per GPU (requests_per_s x mean isl / gpus): the throughput of
    # prefill-only traffic (OSL 1), whose output is one token per request
    prompt_tokens_per_s_per_gpu: float | None = None

    def to_dict(self) -> dict[str, Any]:
        # field by field: asdict deep-copies, which costs milliseconds over a whole frontier
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "pools"}
        pools = {}
        for p in self.pools:
            pools[p.role] = {f.name: getattr(p, f.name) for f in fields(p) if f.name != "role"}
        return {"mode": self.mode, "pools": {k: _clean(v) for k, v in pools.items()}, **_clean(d)}


@dataclass(frozen=True)
class PlanResult:
    best: Deployment | None
    best_agg: Deployment | None
    best_disagg: Deployment | None
    disagg_speedup: float | None
    pareto_agg: tuple[Deployment, ...]
    pareto_disagg: tuple[Deployment, ...]
    design_points: int
    elapsed_ms: float
    reason: str | None = None  # why nothing met the SLO (the binding constraint)
    closest: Deployment | None = None  # the nearest miss when nothing met the SLO
    explanation: str = ""  # why the best was chosen (or none was), what each figure is
    # with a target rate: whether the budget serves it within the SLO (None without a rate)
    rate_served: bool | None = None
    # with a target rate the budget does not serve: the fewest GPUs that would (searched up to
    # 16 times the budget), None when even that does not
    for_rate: Deployment | None = None
    model: str = ""  # the model's name, total and active parameters, quantization
    gpu_basis: str = ""  # "calibrated" or "datasheet-scaled" (GPUs without measured tables)
    load: str = field(default="", compare=False)  # the load model the SLO was judged under

    def to_dict(self) -> dict[str, Any]:
        def dep(d: Deployment | None) -> dict[str, Any] | None:
            return d.to_dict() if d else None

        return {
            "best": dep(self.best),
            "best_agg": dep(self.best_agg),
            "best_disagg": dep(self.best_disagg),
            "disagg_speedup": self.disagg_speedup,
            "pareto": {
                "agg": [d.to_dict() for d in self.pareto_agg],
                "disagg": [d.to_dict() for d in self.pareto_disagg],
            },
            "design_points": self.design_points,
            "elapsed_ms": self.elapsed_ms,
            "reason": self.reason,
            "closest": dep(self.closest),
            "explanation": self.explanation,
            "rate_served": self.rate_served,
            "for_rate": dep(self.for_rate),
            "model": self.model,
            "gpu_basis": self.gpu_basis,
            "load": self.load,
        }

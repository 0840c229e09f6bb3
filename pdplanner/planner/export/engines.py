"""Engine launch commands for one pool of a deployment: vLLM, SGLang and TensorRT-LLM.

Each ``*_launch`` maps a ``Pool`` of the plan onto the engine's own flags (names from
``data/engine_flags.yaml``, checked there):

- tensor parallel: vLLM ``--tensor-parallel-size tp``; SGLang ``--tp-size tp*dp``;
  TensorRT-LLM ``--tp_size tp*dp``
- pipeline parallel: ``--pipeline-parallel-size``; ``--pp-size``; ``--pp_size``
- attention data parallel: ``--data-parallel-size dp``; ``--dp-size dp --enable-dp-attention``;
  ``enable_attention_dp`` (options file)
- expert parallel: ``--enable-expert-parallel`` (vLLM's EP spans tp*dp); ``--ep-size``;
  ``--ep_size``
- batch limit: ``--max-num-seqs``; ``--max-running-requests``; ``--max_batch_size``
- token budget: ``--max-num-batched-tokens``; ``--chunked-prefill-size``; ``--max_num_tokens``
- memory fraction: ``--gpu-memory-utilization``; ``--mem-fraction-static``;
  ``--kv_cache_free_gpu_memory_fraction``
- KV-cache precision: ``--kv-cache-dtype``; ``--kv-cache-dtype`` (``fp8_e4m3``);
  ``kv_cache_config.dtype``
- prefill/decode connector: ``--kv-transfer-config`` (NixlConnector);
  ``--disaggregation-mode`` with ``--disaggregation-transfer-backend nixl``;
  ``cache_transceiver_config.backend`` (UCX)

SGLang and TensorRT-LLM count tensor parallelism over every GPU of a stage (attention DP groups
included), vLLM per attention group: hence ``tp*dp`` in their columns.

The token budget is the most tokens one step schedules: an aggregated pool's chunked-prefill
budget (the plan's ``chunk_tokens``; a pool the plan simulated without chunking, ``chunk_tokens``
None, runs without it and takes the longest request whole), a prefill pool's batch of
whole prompts (``batch x`` the longest ISL), and for a decode pool, which never prefills, the
engine's default budget (at least the batch). The default budget, the memory fraction and chunked
prefill are those of the scheduler the plan was judged under: the engine's defaults
(``pdplanner.planner.serving.scheduler``) with the request's ``engine_args`` applied, the memory
fraction the request's ``memory_fraction`` or the engine's own knob in ``engine_args``
(``memory_fraction_for``), else the engine's default (engines.yaml ``memory.fraction``), so the
KV cache the engine sizes is the one the plan assumed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pdplanner.planner.catalog.engines import EngineSpec
from pdplanner.planner.types import Pool, Precision

#: Ports the launch commands use: the router or frontend, and the first worker of each role.
FRONTEND_PORT = 8000
WORKER_PORTS = {"agg": 8000, "prefill": 8100, "decode": 8200}

#: GPUs of one node (host) unless the export is told otherwise: an HGX/DGX H100, H200 or B200.
DEFAULT_GPUS_PER_NODE = 8
#: GPUs of one compute tray of a 72-GPU NVLink rack (GB200/GB300 NVL72: 18 trays of 4 GPUs, by
#: NVIDIA's NVL72 product pages), the host such a rack's workers are launched on.
NVL72_TRAY_GPUS = 4


def rank_batch(pool: Pool) -> int:
    """Sequences one attention-DP rank of ``pool`` schedules (``pool.batch`` is the worker's).
    vLLM's max_num_seqs and TensorRT-LLM's max_batch_size bound each DP rank's own scheduler;
    SGLang's max_running_requests is the worker's total, which it divides over the DP ranks
    (its per-worker cap is max_running_requests // attn_dp_size)."""
    return -(-pool.batch // max(pool.attention_dp, 1))


def default_gpus_per_node(nvlink_domain_size: int) -> int:
    """GPUs of one host for a GPU whose NVLink domain has ``nvlink_domain_size`` GPUs: a tray
    of 4 in a 72-GPU rack, else an 8-GPU HGX/DGX host."""
    return NVL72_TRAY_GPUS if nvlink_domain_size == 72 else DEFAULT_GPUS_PER_NODE


#: A worker wider than one node: the head node (node rank 0, which serves HTTP) as the launch
#: scripts name it, the port of the Ray head (vLLM) and of SGLang's torch.distributed rendezvous.
HEAD_NODE = "HEAD_NODE"
RAY_PORT = 6379
DIST_INIT_PORT = 5000


@dataclass(frozen=True)
class Launch:
    """One pool's launch: ``program`` then ``args``; every worker of the pool runs the same."""

    pool: Pool
    program: tuple[str, ...]  # the command words, positional arguments included
    args: tuple[str, ...]
    port: int
    # files the launch reads (TensorRT-LLM's extra_llm_api_options YAML): name -> document
    option_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    nodes: int = 1  # nodes one worker spans (tp * pp * dp GPUs over nodes of gpus_per_node)

    @property
    def gpus_per_node(self) -> int:
        """GPUs the worker uses on each of its nodes."""
        return self.pool.gpus_per_worker // self.nodes


def nodes_per_worker(pool: Pool, gpus_per_node: int) -> int:
    """Nodes one worker of ``pool`` spans: ``ceil(tp * pp * dp / gpus_per_node)``.

    Raises ``ValueError`` when the worker's GPUs do not split evenly over that many nodes (every
    engine's multi-node launch puts the same number of ranks on each node).
    """
    if gpus_per_node < 1:
        raise ValueError(f"gpus_per_node must be at least 1, not {gpus_per_node}")
    gpus = pool.gpus_per_worker
    nodes = -(-gpus // gpus_per_node)
    if gpus % nodes:
        raise ValueError(
            f"a {pool.role} worker of {gpus} GPUs does not split evenly over {nodes} nodes of "
            f"{gpus_per_node} GPUs"
        )
    return nodes


def sglang_node_args(nodes: int, node_rank: str, init_addr: str) -> list[str]:
    """SGLang's multi-node flags for one node of a worker (python/sglang/srt/server_args.py):
    the same launch runs on every node with its own ``--node-rank``; rank 0 serves HTTP."""
    return ["--nnodes", str(nodes), "--node-rank", node_rank, "--dist-init-addr", init_addr]


@dataclass(frozen=True)
class PoolContext:
    """What every pool's launch needs besides the pool."""

    model_id: str  # Hugging Face id the engine loads
    served_name: str  # the model name clients request
    precision: Precision
    engine: EngineSpec
    max_isl: int
    max_model_len: int  # longest ISL + OSL of the traffic
    disaggregated: bool
    # the scheduler the plan was judged under (engine defaults with the request's engine_args)
    budget_tokens: int  # max_num_batched_tokens
    # the plan's memory fraction, else the engine's default; None: the engine derives it at start
    # (SGLang), and ``derived_fractions`` holds what it derives for each pool role
    memory_fraction: float | None
    chunked_prefill: bool
    derived_fractions: Mapping[str, float] = field(default_factory=dict)
    # the largest decode batch the plan priced as a CUDA-graph replay (cuda_graph_max_bs)
    cuda_graph_max_bs: int = 0

    def fraction_for(self, pool: Pool) -> float:
        """The memory fraction the plan priced ``pool`` at."""
        if self.memory_fraction is not None:
            return self.memory_fraction
        return self.derived_fractions[pool.role]


def agg_chunks(pool: Pool, ctx: PoolContext) -> bool:
    """Whether an aggregated pool runs chunked prefill: when the plan chose a chunk budget for it
    (``chunk_tokens`` None: the search simulated it without chunking) under a scheduler that
    chunks."""
    return pool.role == "agg" and ctx.chunked_prefill and pool.chunk_tokens is not None


def token_budget(pool: Pool, ctx: PoolContext) -> int:
    """Most tokens one step of this pool schedules (see the module docstring)."""
    if pool.role == "agg":
        if agg_chunks(pool, ctx):
            return int(pool.chunk_tokens or ctx.budget_tokens)
        # without chunking a step must take the longest prompt whole
        return max(ctx.budget_tokens, ctx.max_model_len)
    if pool.role == "prefill":
        return pool.batch * ctx.max_isl
    return max(ctx.budget_tokens, pool.batch)


def _fraction(pool: Pool, ctx: PoolContext) -> str:
    # SGLang rounds the fraction it derives to 3 digits
    digits = 2 if ctx.memory_fraction is not None else 3
    return f"{ctx.fraction_for(pool):.{digits}f}"


def vllm_args(pool: Pool, ctx: PoolContext) -> list[str]:
    """vLLM engine flags of one pool (``vllm serve`` and ``python3 -m dynamo.vllm`` share them)."""
    args = [
        "--served-model-name", ctx.served_name,
        "--tensor-parallel-size", str(pool.tp),
        "--pipeline-parallel-size", str(pool.pp),
    ]  # fmt: skip
    if pool.attention_dp > 1:
        args += ["--data-parallel-size", str(pool.attention_dp)]
    if pool.ep > 1:
        args.append("--enable-expert-parallel")
    args += [
        "--max-num-seqs", str(rank_batch(pool)),
        "--max-num-batched-tokens", str(token_budget(pool, ctx)),
        "--max-model-len", str(ctx.max_model_len),
        "--gpu-memory-utilization", _fraction(pool, ctx),
        "--kv-cache-dtype", "fp8" if ctx.precision.kv_dtype == "fp8" else "auto",
    ]  # fmt: skip
    if pool.role == "agg":
        # vLLM chunks by default: say which the plan simulated
        args.append(
            "--enable-chunked-prefill" if agg_chunks(pool, ctx) else "--no-enable-chunked-prefill"
        )
    args += _weights(
        ctx.precision, {"bf16": ["--dtype", "bfloat16"], "fp8": ["--quantization", "fp8"]}
    )
    return args


def sglang_args(pool: Pool, ctx: PoolContext) -> list[str]:
    """SGLang server flags of one pool (``python3 -m dynamo.sglang`` takes the same)."""
    args = [
        "--model-path", ctx.model_id,
        "--served-model-name", ctx.served_name,
        "--tp-size", str(pool.tp * pool.attention_dp),
        "--pp-size", str(pool.pp),
    ]  # fmt: skip
    if pool.attention_dp > 1:
        args += ["--dp-size", str(pool.attention_dp), "--enable-dp-attention"]
    if pool.ep > 1:
        args += ["--ep-size", str(pool.ep)]
    args += [
        "--max-running-requests", str(pool.batch),
        # -1: no chunked prefill (an aggregated pool the plan simulated without it)
        "--chunked-prefill-size",
        str(token_budget(pool, ctx)) if pool.role != "agg" or agg_chunks(pool, ctx) else "-1",
        "--context-length", str(ctx.max_model_len),
        "--mem-fraction-static", _fraction(pool, ctx),
        "--kv-cache-dtype", "fp8_e4m3" if ctx.precision.kv_dtype == "fp8" else "auto",
    ]  # fmt: skip
    args += _weights(
        ctx.precision, {"bf16": ["--dtype", "bfloat16"], "fp8": ["--quantization", "fp8"]}
    )
    if ctx.disaggregated:
        args += [
            "--disaggregation-mode", pool.role,
            "--disaggregation-transfer-backend", "nixl",
        ]  # fmt: skip
    return args


def trtllm_options(pool: Pool, ctx: PoolContext) -> dict[str, Any]:
    """TensorRT-LLM's ``extra_llm_api_options`` document for one pool."""
    options: dict[str, Any] = {
        "enable_attention_dp": pool.attention_dp > 1,
        "enable_chunked_prefill": agg_chunks(pool, ctx),
        "kv_cache_config": {
            "dtype": "fp8" if ctx.precision.kv_dtype == "fp8" else "auto",
            "free_gpu_memory_fraction": ctx.fraction_for(pool),
        },
    }
    if pool.role != "prefill" and ctx.cuda_graph_max_bs > 0:
        # The plan priced decode batches as graph replays padded up to the next captured size,
        # up to cuda_graph_max_bs, and eager steps past it (the step model). TensorRT-LLM pads
        # only with enable_padding (default false: a batch between captured sizes would run
        # eagerly; API reference, DecodeCudaGraphConfig); its default capture reaches 128.
        options["cuda_graph_config"] = {
            "enable_padding": True,
            "max_batch_size": min(rank_batch(pool), ctx.cuda_graph_max_bs),
        }
    if ctx.disaggregated:
        options["cache_transceiver_config"] = {"backend": "UCX"}
        # context (prefill) servers run without the overlap scheduler in a disaggregated pair
        options["disable_overlap_scheduler"] = pool.role == "prefill"
    return options


def trtllm_args(pool: Pool, ctx: PoolContext, options_file: str) -> list[str]:
    """``trtllm-serve`` flags of one pool (PyTorch backend)."""
    args = [
        "--backend", "pytorch",
        "--tp_size", str(pool.tp * pool.attention_dp),
        "--pp_size", str(pool.pp),
    ]  # fmt: skip
    if pool.ep > 1:
        args += ["--ep_size", str(pool.ep)]
    args += [
        "--max_batch_size", str(rank_batch(pool)),
        "--max_num_tokens", str(token_budget(pool, ctx)),
        "--max_seq_len", str(ctx.max_model_len),
        "--kv_cache_free_gpu_memory_fraction", _fraction(pool, ctx),
        "--extra_llm_api_options", options_file,
    ]  # fmt: skip
    return args


def _weights(precision: Precision, flags: dict[str, list[str]]) -> list[str]:
    # fp4 weights come from a checkpoint quantized ahead (ModelOpt NVFP4): no flag to add
    return list(flags.get(precision.dtype, []))


def launch(
    engine: str,
    pool: Pool,
    ctx: PoolContext,
    *,
    host: str = "0.0.0.0",
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE,
) -> Launch:
    """The launch of one pool on ``engine`` (``vllm``, ``sglang`` or ``trtllm``).

    A worker wider than ``gpus_per_node`` spans ``nodes_per_worker`` nodes. Its per-node part is
    left to the writer of each format (a script's ``ray start``/``--node-rank``/``mpirun``, a
    LeaderWorkerSet's pods); the one flag that does not change per node is added here: vLLM 0.11
    runs a multi-node worker only on Ray (``--distributed-executor-backend ray``; vLLM picks Ray
    itself when the node has fewer GPUs than the worker, this says so explicitly).
    """
    port = WORKER_PORTS[pool.role]
    net = ["--host", host, "--port", str(port)]
    nodes = nodes_per_worker(pool, gpus_per_node)
    if engine == "vllm":
        args = net + vllm_args(pool, ctx)
        if nodes > 1:
            args += ["--distributed-executor-backend", "ray"]
        if ctx.disaggregated:
            connector = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
            args += ["--kv-transfer-config", json.dumps(connector, separators=(",", ":"))]
        return Launch(pool, ("vllm", "serve", ctx.model_id), tuple(args), port, nodes=nodes)
    if engine == "sglang":
        program = ("python3", "-m", "sglang.launch_server")
        return Launch(pool, program, tuple(net + sglang_args(pool, ctx)), port, nodes=nodes)
    if engine == "trtllm":
        name = f"extra-llm-api-{pool.role}.yaml"
        args = net + trtllm_args(pool, ctx, name)
        options = {name: trtllm_options(pool, ctx)}
        serve = ("trtllm-serve", ctx.model_id)
        return Launch(pool, serve, tuple(args), port, options, nodes=nodes)
    raise ValueError(f"no launch for engine {engine!r}")

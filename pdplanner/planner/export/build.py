"""``export_plan``: the files of one export format for a plan's chosen deployment."""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, replace
from typing import Any, Final

import yaml

from pdplanner.planner.catalog import ModelCatalog, default_models
from pdplanner.planner.catalog.engines import EngineSpec, load_engine
from pdplanner.planner.catalog.gpus import GpuCatalog, GpuSpec, default_gpus
from pdplanner.planner.errors import InvalidInputError, PlannerError
from pdplanner.planner.export import flags, manifests
from pdplanner.planner.export.engines import (
    DIST_INIT_PORT,
    FRONTEND_PORT,
    HEAD_NODE,
    RAY_PORT,
    WORKER_PORTS,
    Launch,
    PoolContext,
    default_gpus_per_node,
    launch,
    sglang_node_args,
)
from pdplanner.planner.perf.memory import derived_fraction
from pdplanner.planner.perf.params import hardware_vector
from pdplanner.planner.serving.scheduler import memory_fraction_for, scheduler_for
from pdplanner.planner.types import Deployment, PlanRequest, PlanResult

#: The formats ``export_plan`` writes.
EXPORT_FORMATS: Final = ("vllm", "sglang", "trtllm", "dynamo", "k8s")
#: Seconds of traffic the benchmark offers at the predicted rate (at least MIN_PROMPTS prompts).
BENCHMARK_SECONDS: Final = 300
MIN_PROMPTS: Final = 200


class ExportError(InvalidInputError):
    """A plan that cannot be exported in the asked format."""


@dataclass(frozen=True)
class ExportedFile:
    """One generated file: its name (relative) and text."""

    path: str
    content: str
    executable: bool = False


@dataclass(frozen=True)
class PlanExport:
    """The files of one format, the engine and version their flags were checked against, the
    benchmark command, and notes on what the files leave to the operator."""

    format: str
    engine: str
    engine_version: str
    files: tuple[ExportedFile, ...]
    benchmark_command: str
    notes: tuple[str, ...] = ()


def model_id(name: str, models: ModelCatalog | None = None) -> str:
    """The Hugging Face id an engine loads for a catalog model: its first ``org/name`` alias
    (instruct variants preferred), else the catalog name."""
    spec = (models or default_models()).get(name, "model")
    ids = [a for a in spec.aliases if "/" in a]
    instruct = [a for a in ids if a.lower().endswith("-instruct")]
    return (instruct or ids or [spec.name])[0]


def _gpu(gpus: GpuCatalog, name: str, needed_for: str) -> GpuSpec:
    try:
        return gpus.get(name, "gpu")
    except PlannerError as e:
        raise ExportError(
            needed_for, f"the plan's GPU {name!r} is not in the catalog any more: {e}"
        ) from e


def _host_gpus(gpus: GpuCatalog, name: str) -> int:
    """GPUs of one host for a pool on GPU ``name``: a compute tray of 4 in a 72-GPU NVLink rack,
    else 8 (also for a GPU the catalog no longer holds; ``--gpus-per-node`` says otherwise)."""
    spec = gpus.find(name)
    return default_gpus_per_node(spec.nvlink_domain_size if spec is not None else 8)


def _derived_fractions(
    chosen: Deployment, engine: EngineSpec, gpus: GpuCatalog
) -> dict[str, float]:
    """The memory fraction ``engine`` derives at start for each pool of ``chosen`` (SGLang's
    mem_fraction_static; ``memory.derived_fraction``), which the plan priced its KV cache at."""
    out: dict[str, float] = {}
    for pool in chosen.pools:
        gpu = _gpu(gpus, pool.gpu, "memory_fraction")
        hv = hardware_vector(gpu, engine, "bf16", "bf16")
        out[pool.role] = float(derived_fraction(hv, pool.tp, pool.pp, pool.attention_dp))
    return out


def _context(
    request: PlanRequest,
    chosen: Deployment,
    models: ModelCatalog | None,
    gpus: GpuCatalog,
    launched: str,
) -> PoolContext:
    """The plan's scheduler (token budgets, chunking) and the memory fraction of the ``launched``
    engine: the plan's own when it is the plan's engine, else that engine's default (the engines'
    memory knobs mean different things, engines.yaml memory rules)."""
    engine = load_engine(request.engine)
    args = dict(request.engine_args)
    sched = scheduler_for(engine, args)
    if launched == request.engine:
        fraction = memory_fraction_for(engine, args, request.memory_fraction)
    else:
        engine, fraction = load_engine(launched), None
    if fraction is None:
        fraction = engine.memory_fraction
    derived = {} if fraction is not None else _derived_fractions(chosen, engine, gpus)
    precision = request.precision
    if str(args.get("kv_cache_dtype", "")).lower() == "fp8":  # the plan's KV bytes came from here
        precision = replace(precision, kv_dtype="fp8")
    return PoolContext(
        model_id=model_id(request.model, models),
        served_name=model_id(request.model, models),
        precision=precision,
        engine=engine,
        budget_tokens=sched.max_num_batched_tokens,
        memory_fraction=fraction,
        chunked_prefill=sched.enable_chunked_prefill,
        derived_fractions=derived if fraction is None else {},
        cuda_graph_max_bs=sched.cuda_graph_max_bs if engine.decode_cuda_graphs else 0,
        max_isl=max(w.isl for w in request.traffic),
        max_model_len=max(w.isl + w.osl for w in request.traffic),
        disaggregated=chosen.mode == "disagg",
    )


def benchmark_command(request: PlanRequest, chosen: Deployment, model: str, base_url: str) -> str:
    """``vllm bench serve`` offering the plan's traffic at its predicted request rate.

    Random prompts of the plan's ISL/OSL (the heaviest-weighted traffic point of a mix), Poisson
    arrivals (the client's default burstiness 1.0) at ``chosen.requests_per_s``, ``--ignore-eos``
    so every request decodes OSL tokens, and TTFT/TPOT/ITL at p50/p90/p99 to compare with the
    plan's predictions at its SLO percentile.
    """
    point = max(request.traffic, key=lambda w: w.weight)
    rate = chosen.requests_per_s
    prompts = max(MIN_PROMPTS, math.ceil(rate * BENCHMARK_SECONDS))
    words = [
        "vllm", "bench", "serve",
        "--backend", "openai",
        "--base-url", base_url,
        "--endpoint", "/v1/completions",
        "--model", model,
        "--dataset-name", "random",
        "--random-input-len", str(point.isl),
        "--random-output-len", str(point.osl),
        "--num-prompts", str(prompts),
        "--request-rate", f"{rate:.3f}",
        "--ignore-eos",
        "--percentile-metrics", "ttft,tpot,itl",
        "--metric-percentiles", "50,90,99",
    ]  # fmt: skip
    return shlex.join(words)


def _script(lines: list[str]) -> str:
    return "\n".join(["#!/usr/bin/env bash", "set -euo pipefail", *lines]) + "\n"


_SHELL_VARIABLE = re.compile(r"\$[A-Z_][A-Z0-9_]*")


def _quote(word: str) -> str:
    # a shell variable the operator sets ("$NODE_RANK") is expanded, everything else is literal
    return f'"{word}"' if _SHELL_VARIABLE.fullmatch(word) else shlex.quote(word)


def _command(words: tuple[str, ...] | list[str], args: tuple[str, ...] | list[str]) -> list[str]:
    """A command as shell lines, one flag (and its value) per line."""
    out = [" ".join(_quote(w) for w in words) + " \\"]
    pairs: list[list[str]] = []
    for a in args:
        if a.startswith("-") or not pairs:
            pairs.append([a])
        else:
            pairs[-1].append(a)
    for i, pair in enumerate(pairs):
        line = " ".join(_quote(w) for w in pair)
        out.append("    " + line + (" \\" if i < len(pairs) - 1 else ""))
    return out


def _multinode_lines(engine: str, item: Launch) -> list[str]:
    """The launch of one worker over ``item.nodes`` nodes, as each engine starts one.

    - vLLM 0.11: a Ray cluster over the worker's nodes (``ray start --head`` on the head node,
      ``ray start --address`` on the others), then ``vllm serve`` on the head node, whose Ray
      executor places the tp * pp ranks over the cluster's GPUs.
    - SGLang 0.5.3: the same ``launch_server`` on every node with ``--nnodes``, its own
      ``--node-rank`` (0 on the head node, which serves HTTP) and ``--dist-init-addr`` of rank 0.
    - TensorRT-LLM: one MPI rank per GPU over the nodes (Open MPI's ``mpirun -np -H``), each
      running ``trtllm-llmapi-launch trtllm-serve``: rank 0 serves, the others are the LLM API's
      MPI workers.
    """
    nodes, per_node = item.nodes, item.gpus_per_node
    others = f"each of the other {nodes - 1} node(s)"
    if engine == "vllm":
        return [
            f"# a worker spans {nodes} nodes of {per_node} GPUs, joined by Ray; on its head node "
            f"({HEAD_NODE}):",
            shlex.join(["ray", "start", "--head", "--port", str(RAY_PORT)]),
            f"# on {others} of the worker:",
            shlex.join(["ray", "start", "--address", f"{HEAD_NODE}:{RAY_PORT}", "--block"]),
            "# then on the head node:",
            *_command(item.program, item.args),
        ]
    if engine == "sglang":
        node_args = sglang_node_args(nodes, "$NODE_RANK", f"{HEAD_NODE}:{DIST_INIT_PORT}")
        return [
            f"# a worker spans {nodes} nodes of {per_node} GPUs: run this on each of them with "
            f"NODE_RANK=0..{nodes - 1}",
            f"# (0 on the head node, {HEAD_NODE}, which serves HTTP)",
            *_command(item.program, [*item.args, *node_args]),
        ]
    if engine == "trtllm":
        hosts = ",".join(f"{HEAD_NODE if n == 0 else f'NODE_{n}'}:{per_node}" for n in range(nodes))
        mpi = ["mpirun", "--allow-run-as-root", "-np", str(item.pool.gpus_per_worker), "-H", hosts,
               "trtllm-llmapi-launch", *item.program]  # fmt: skip
        return [
            f"# a worker spans {nodes} nodes of {per_node} GPUs: one MPI rank per GPU, started "
            f"from the head node ({HEAD_NODE})",
            *_command(mpi, item.args),
        ]
    raise ValueError(f"no multi-node launch for engine {engine!r}")


def _header(name: str, request: PlanRequest, chosen: Deployment, engine: str) -> list[str]:
    w = request.traffic[0]
    pools = ", ".join(
        f"{p.role} {p.workers} x {p.gpu} TP{p.tp} PP{p.pp}"
        + (f" EP{p.ep}" if p.ep > 1 else "")
        + (f" DP{p.attention_dp}" if p.attention_dp > 1 else "")
        + f" batch {p.batch}"
        for p in chosen.pools
    )
    version = flags.engine_version({"trtllm": "tensorrt-llm"}.get(engine, engine))
    return [
        f"# {name}: {request.model}, ISL {w.isl} / OSL {w.osl}, TTFT {request.slo.ttft_ms:g} ms"
        f" / TPOT {request.slo.tpot_ms:g} ms ({request.slo.percentile})",
        f"# {chosen.mode}: {pools}; {chosen.gpus} GPUs",
        f"# flags of {engine} {version}; written by `pdplanner export`",
    ]


def _predictions(chosen: Deployment, request: PlanRequest) -> list[str]:
    return [
        f"# predicted at {chosen.requests_per_s:.3f} req/s: TTFT {request.slo.percentile} "
        f"{chosen.ttft_ms:.1f} ms (queueing included), TPOT {chosen.tpot_ms:.2f} ms,",
        f"# {chosen.tokens_per_s_per_gpu:.1f} output tokens/s/GPU, "
        f"{chosen.tokens_per_s_per_user:.1f} tokens/s/user",
    ]


def _launch_script(
    engine: str, name: str, request: PlanRequest, chosen: Deployment, launches: list[Launch]
) -> list[str]:
    lines = _header(name, request, chosen, engine)
    for item in launches:
        p = item.pool
        lines += [
            "",
            f"# {p.role} pool: {p.workers} worker(s) of {p.gpus_per_worker} x {p.gpu}; "
            + (
                f"run this on each worker's host (port {item.port})"
                if item.nodes == 1
                else f"run this for each worker (port {item.port} on its head node)"
            ),
        ]
        for option_file, doc in item.option_files.items():
            body = yaml.safe_dump(doc, sort_keys=False).rstrip()
            lines += [f"cat > {option_file} <<'YAML'", body, "YAML"]
        if item.nodes > 1:
            lines += _multinode_lines(engine, item)
        else:
            lines += _command(item.program, item.args)
    if chosen.mode != "disagg":
        return lines
    prefill = f"http://PREFILL_HOST:{WORKER_PORTS['prefill']}"
    decode = f"http://DECODE_HOST:{WORKER_PORTS['decode']}"
    lines.append("")
    if engine == "sglang":
        lines.append("# the router that pairs prefill and decode workers (one --prefill/--decode "
                     "per worker)")  # fmt: skip
        lines += _command(
            ("python3", "-m", "sglang_router.launch_router"),
            ["--pd-disaggregation", "--prefill", prefill, "--decode", decode,
             "--host", "0.0.0.0", "--port", str(FRONTEND_PORT)],
        )  # fmt: skip
    elif engine == "trtllm":
        config = {
            "hostname": "0.0.0.0",
            "port": FRONTEND_PORT,
            "backend": "pytorch",
            "context_servers": {"num_instances": launches[0].pool.workers, "urls": [prefill[7:]]},
            "generation_servers": {"num_instances": launches[1].pool.workers, "urls": [decode[7:]]},
        }
        lines += ["# the disaggregated front server (one url per worker)",
                  "cat > disagg.yaml <<'YAML'", yaml.safe_dump(config, sort_keys=False).rstrip(),
                  "YAML", "trtllm-serve disaggregated -c disagg.yaml"]  # fmt: skip
    else:
        lines.append("# vLLM 0.11 ships no prefill/decode router: put Dynamo (--format dynamo) or "
                     "llm-d in front of the workers")  # fmt: skip
    return lines


def export_plan(
    request: PlanRequest,
    result: PlanResult,
    fmt: str,
    name: str = "plan",
    models: ModelCatalog | None = None,
    gpus_per_node: int | None = None,
    gpus: GpuCatalog | None = None,
) -> PlanExport:
    """The files of ``fmt`` (one of ``EXPORT_FORMATS``) for ``result.best``.

    ``name`` is the plan's resource name (``plans/{id}``), written into the files' headers and
    Kubernetes object names. ``gpus_per_node`` is the GPUs of one host (None: 4, a compute tray,
    for a GPU of a 72-GPU NVLink rack, else 8, ``default_gpus_per_node``; ``gpus`` is the GPU
    catalog to look the plan's GPUs up in, the built-in one when None): a worker with more
    (tp * pp * dp) gets its engine's multi-node launch (see ``_multinode_lines``,
    ``manifests.kubernetes`` and ``manifests.dynamo_graph``). Raises ``ExportError`` on
    ``format`` for an unknown format or a multi-node TensorRT-LLM worker as plain Kubernetes
    manifests, and on ``name`` for a plan without a chosen deployment or whose workers do not
    split evenly over nodes.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError("format", f"must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    chosen = result.best
    if chosen is None:
        raise ExportError(
            "name", f"{name} has no chosen deployment to export ({result.reason or 'none met'})"
        )
    engine = fmt if fmt in ("vllm", "sglang", "trtllm") else request.engine
    gpus = gpus or default_gpus()
    ctx = _context(request, chosen, models, gpus, engine)
    notes: list[str] = []
    if engine != request.engine:
        notes.append(
            f"the plan was priced for {request.engine}: its predictions assume "
            f"{request.engine}'s scheduler and memory rule; this {engine} launch keeps the "
            f"plan's layouts, batches and token budgets and {engine}'s own default "
            f"{ctx.engine.memory_fraction_flag}"
        )
    order = {"prefill": 0, "decode": 1, "agg": 2}
    pools = sorted(chosen.pools, key=lambda p: order[p.role])
    try:
        launches = [
            launch(engine, p, ctx, gpus_per_node=gpus_per_node or _host_gpus(gpus, p.gpu))
            for p in pools
        ]
    except ValueError as error:
        # a worker that does not split over the hosts: the request's gpus_per_node where it
        # gave one, else the plan's layout on its GPU's own hosts
        field = "gpus_per_node" if gpus_per_node else "name"
        raise ExportError(field, f"{name}: {error}") from None
    base = manifests.dns_name(f"pdplanner-{name.rsplit('/', 1)[-1][:12]}")
    files: list[ExportedFile] = []
    if fmt in ("vllm", "sglang", "trtllm"):
        script = _launch_script(engine, name, request, chosen, launches)
        files.append(ExportedFile("launch.sh", _script(script), executable=True))
        url = f"http://ROUTER_HOST:{FRONTEND_PORT}"
    elif fmt == "k8s":
        wide = [item for item in launches if item.nodes > 1]
        if wide and engine == "trtllm":
            raise ExportError(
                "format",
                f"a {wide[0].pool.role} worker spans {wide[0].nodes} nodes: TensorRT-LLM starts "
                "it with mpirun over SSH between the pods, which plain manifests do not set up; "
                "use --format dynamo (the operator launches it) or --format trtllm",
            )
        objects = manifests.kubernetes(base, launches, engine)
        files.append(ExportedFile("deployment.yaml", _yaml(objects, name, request, chosen, engine)))
        first = launches[-1] if chosen.mode == "disagg" else launches[0]
        url = f"http://{base}-{first.pool.role}:{first.port}"
        if chosen.mode == "disagg":
            notes.append("the pools are plain Deployments: a prefill/decode router (Dynamo, "
                         "llm-d, sglang_router) must join them")  # fmt: skip
    else:
        objects = manifests.dynamo_graph(base, launches, engine, ctx)
        files.append(
            ExportedFile("dynamo-graph.yaml", _yaml(objects, name, request, chosen, engine))
        )
        url = f"http://{base}-frontend:{FRONTEND_PORT}"
    for item in launches:
        if item.nodes > 1:
            notes.append(f"a {item.pool.role} worker spans {item.nodes} nodes of "
                         f"{item.gpus_per_node} GPUs: the files start it on each node")  # fmt: skip
    bench = benchmark_command(request, chosen, ctx.model_id, url)
    files.append(ExportedFile(
        "benchmark.sh",
        _script(_header(name, request, chosen, engine) + _predictions(chosen, request)
                + [bench.replace(" --", " \\\n    --")]),
        executable=True,
    ))  # fmt: skip
    export = PlanExport(
        format=fmt,
        engine=engine,
        engine_version=flags.engine_version({"trtllm": "tensorrt-llm"}.get(engine, engine)),
        files=tuple(files),
        benchmark_command=bench,
        notes=tuple(notes),
    )
    check(export)
    return export


def _yaml(
    objects: list[dict[str, object]], name: str, request: PlanRequest, chosen: Deployment,
    engine: str,
) -> str:  # fmt: skip
    head = "\n".join(_header(name, request, chosen, engine)) + "\n"
    return head + yaml.safe_dump_all(objects, sort_keys=False)


def commands(export: PlanExport) -> list[str]:
    """Every command line the export runs: its shell scripts' commands and its manifests'
    containers (command + args)."""
    out: list[str] = []
    for f in export.files:
        if f.path.endswith(".sh"):
            text = f.content
            # heredocs hold option files, not commands
            kept, inside = [], False
            for line in text.splitlines():
                if inside:
                    inside = line.strip() != "YAML"
                    continue
                if line.startswith("cat > ") and "<<'YAML'" in line:
                    inside = True
                    continue
                kept.append(line)
            out += flags.shell_commands("\n".join(kept))
        else:
            for doc in yaml.safe_load_all(f.content):
                for container in containers(doc):
                    out += container_commands(container)
    return out


def container_commands(container: dict[str, Any]) -> list[str]:
    """The command lines a container runs: its command and args, or each command of an
    ``sh -c`` script."""
    words = [*container["command"], *container.get("args", [])]
    if words[:2] == ["sh", "-c"] and len(words) == 3:
        return flags.script_commands(words[2])
    return [shlex.join(words)]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The engine containers of a manifest document (Deployment, LeaderWorkerSet,
    DynamoGraphDeployment)."""
    kind = doc.get("kind")
    if kind == "Deployment":
        return list(doc["spec"]["template"]["spec"]["containers"])
    if kind == "LeaderWorkerSet":
        template = doc["spec"]["leaderWorkerTemplate"]
        pods = [template["leaderTemplate"], template["workerTemplate"]]
        return [c for pod in pods for c in pod["spec"]["containers"]]
    if kind == "DynamoGraphDeployment":
        return [s["extraPodSpec"]["mainContainer"] for s in doc["spec"]["services"].values()]
    return []


def check(export: PlanExport) -> None:
    """Check every command of ``export`` against the flag table (``flags.UnknownFlagError``)."""
    for line in commands(export):
        flags.check_command(line)

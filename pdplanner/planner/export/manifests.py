"""Cluster manifests of a deployment: plain Kubernetes, or an NVIDIA Dynamo graph deployment.

Kubernetes (``apps/v1`` Deployment, ``v1`` Service and ConfigMap): one Deployment per pool whose
replicas are the pool's workers and whose pod requests the worker's GPUs (``nvidia.com/gpu``, the
NVIDIA device plugin's resource), running the pool's engine launch; a Service per pool in front of
its workers. A worker wider than one node is a LeaderWorkerSet instead
(``leaderworkerset.x-k8s.io/v1``, kubernetes-sigs/lws api/leaderworkerset/v1): one group of
``size`` = nodes pods per worker, each pod requesting the GPUs of one node; the pods find the
leader through the ``LWS_LEADER_ADDRESS``, ``LWS_GROUP_SIZE`` and ``LWS_WORKER_INDEX``
environment variables LWS sets in every container, and the Service selects the leaders
(``leaderworkerset.sigs.k8s.io/worker-index: "0"``), which serve HTTP.

Dynamo (``nvidia.com/v1alpha1`` DynamoGraphDeployment, the shape of Dynamo 0.5's operator
examples): a ``Frontend`` service (``python3 -m dynamo.frontend``) and one worker service per pool
(``python3 -m dynamo.vllm|sglang|trtllm``) with the pool's replicas, GPU limit and engine flags.
A worker wider than one node sets ``multinode.nodeCount`` (the operator's ``MultinodeSpec``:
total GPUs = nodeCount x the GPU limit, which is then per node); the operator starts its pods on
that many nodes and adds the engine's per-node launch (deploy/cloud/operator/internal/dynamo/
backend_{vllm,sglang,trtllm}.go).
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from pdplanner.planner.export.engines import (
    DIST_INIT_PORT,
    FRONTEND_PORT,
    RAY_PORT,
    Launch,
    PoolContext,
    rank_batch,
    sglang_args,
    sglang_node_args,
    token_budget,
    vllm_args,
)

#: Container images of each engine at the version whose flags the table holds.
ENGINE_IMAGES = {
    "vllm": "vllm/vllm-openai:v0.11.0",
    "sglang": "lmsysorg/sglang:v0.5.3",
    "trtllm": "nvcr.io/nvidia/tensorrt-llm/release:1.0.0",
}
DYNAMO_IMAGES = {
    "vllm": "nvcr.io/nvidia/ai-dynamo/vllm-runtime:0.5.0",
    "sglang": "nvcr.io/nvidia/ai-dynamo/sglang-runtime:0.5.0",
    "trtllm": "nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:0.5.0",
}
GPU_RESOURCE = "nvidia.com/gpu"
OPTIONS_MOUNT = "/etc/pdplanner"
#: The label LWS puts on every pod of a group: 0 on the leader (leaderworkerset_types.go).
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"


def dns_name(text: str) -> str:
    """A Kubernetes object name (RFC 1123 label: lowercase alphanumerics and '-', 63 at most)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:63].rstrip("-") or "plan"


def kubernetes(base: str, launches: list[Launch], engine: str) -> list[dict[str, Any]]:
    """The Kubernetes objects of a deployment: ConfigMap (options), then Deployment and Service
    per pool."""
    objects: list[dict[str, Any]] = []
    options = {name: doc for launch in launches for name, doc in launch.option_files.items()}
    config_name = f"{base}-options"
    if options:
        import yaml

        objects.append({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": config_name, "labels": {"app.kubernetes.io/part-of": base}},
            "data": {name: yaml.safe_dump(doc, sort_keys=False) for name, doc in options.items()},
        })  # fmt: skip
    for launch in launches:
        pool = launch.pool
        name = f"{base}-{pool.role}"
        labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": base,
                  "pdplanner.dev/role": pool.role}  # fmt: skip
        args = [f"{OPTIONS_MOUNT}/{a}" if a in launch.option_files else a for a in launch.args]
        selector = {"app.kubernetes.io/name": name}
        if launch.nodes == 1:
            pod = _pod(launch, engine, config_name, list(launch.program), args, probe=True)
            objects.append({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "replicas": pool.workers,
                    "selector": {"matchLabels": dict(selector)},
                    "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
                },
            })  # fmt: skip
        else:
            objects.append(_leader_worker_set(name, labels, launch, engine, config_name, args))
            selector[LWS_WORKER_INDEX_LABEL] = "0"  # the leaders serve HTTP
        objects.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": {
                "selector": selector,
                "ports": [{"name": "http", "port": launch.port, "targetPort": "http"}],
            },
        })  # fmt: skip
    return objects


def _pod(
    launch: Launch, engine: str, config_name: str, command: list[str], args: list[str],
    *, probe: bool,
) -> dict[str, Any]:  # fmt: skip
    """The pod spec of one node of a worker: the engine container with one node's GPUs."""
    gpus = launch.gpus_per_node
    container: dict[str, Any] = {
        "name": "engine",
        "image": ENGINE_IMAGES[engine],
        "command": command,
        "args": args,
    }
    if probe:  # the pod that serves HTTP
        container["ports"] = [{"name": "http", "containerPort": launch.port}]
    container["resources"] = {"requests": {GPU_RESOURCE: gpus}, "limits": {GPU_RESOURCE: gpus}}
    if probe:
        container["readinessProbe"] = {
            "httpGet": {"path": "/health", "port": launch.port},
            "periodSeconds": 10,
        }
    pod: dict[str, Any] = {"containers": [container]}
    if launch.option_files:
        container["volumeMounts"] = [{"name": "options", "mountPath": OPTIONS_MOUNT}]
        pod["volumes"] = [{"name": "options", "configMap": {"name": config_name}}]
    return pod


def _leader_worker_set(
    name: str, labels: dict[str, str], launch: Launch, engine: str, config_name: str,
    args: list[str],
) -> dict[str, Any]:  # fmt: skip
    """A LeaderWorkerSet running each worker of a pool over ``launch.nodes`` pods.

    vLLM: the leader starts the Ray head and then ``vllm serve`` (one ``sh -c``), the other pods
    join its Ray cluster; SGLang: every pod runs the same launch with its own ``--node-rank``
    (``$(LWS_WORKER_INDEX)``, which Kubernetes expands in args). TensorRT-LLM (mpirun over SSH
    between pods) is not written as plain manifests: ``export_plan`` refuses it.
    """
    leader_address = "$(LWS_LEADER_ADDRESS)"
    leader: tuple[list[str], list[str]]
    worker: tuple[list[str], list[str]]
    if engine == "vllm":
        head = shlex.join(["ray", "start", "--head", "--port", str(RAY_PORT)])
        serve = shlex.join([*launch.program, *args])
        leader = ["sh", "-c"], [f"{head} && exec {serve}"]
        join = ["ray", "start", "--address", f"{leader_address}:{RAY_PORT}", "--block"]
        worker = join, []
    elif engine == "sglang":
        node_args = sglang_node_args(
            launch.nodes, "$(LWS_WORKER_INDEX)", f"{leader_address}:{DIST_INIT_PORT}"
        )
        leader = list(launch.program), [*args, *node_args]
        worker = list(launch.program), [*args, *node_args]
    else:
        raise ValueError(f"no LeaderWorkerSet launch for engine {engine!r}")
    leader_pod = _pod(launch, engine, config_name, leader[0], leader[1], probe=True)
    worker_pod = _pod(launch, engine, config_name, worker[0], worker[1], probe=False)
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": launch.pool.workers,
            "leaderWorkerTemplate": {
                "size": launch.nodes,
                "leaderTemplate": {"metadata": {"labels": dict(labels)}, "spec": leader_pod},
                "workerTemplate": {"metadata": {"labels": dict(labels)}, "spec": worker_pod},
            },
        },
    }


def dynamo_worker_args(engine: str, launch: Launch, ctx: PoolContext) -> list[str]:
    """The arguments of ``python3 -m dynamo.<engine>`` for one pool."""
    pool = launch.pool
    if engine == "vllm":
        args = ["--model", ctx.model_id, *vllm_args(pool, ctx)]
        if pool.role == "prefill":
            args.append("--is-prefill-worker")
        return args
    if engine == "sglang":
        return sglang_args(pool, ctx)
    args = [
        "--model-path", ctx.model_id,
        "--served-model-name", ctx.served_name,
        "--tensor-parallel-size", str(pool.tp * pool.attention_dp),
        "--pipeline-parallel-size", str(pool.pp),
        "--expert-parallel-size", str(pool.ep),
        "--max-batch-size", str(rank_batch(pool)),
        "--max-num-tokens", str(token_budget(pool, ctx)),
        "--max-seq-len", str(ctx.max_model_len),
        "--extra-engine-args", f"{OPTIONS_MOUNT}/{next(iter(launch.option_files))}",
    ]  # fmt: skip
    if ctx.disaggregated:
        args += ["--disaggregation-mode", pool.role, "--disaggregation-strategy", "decode_first"]
    return args


def dynamo_graph(
    base: str, launches: list[Launch], engine: str, ctx: PoolContext
) -> list[dict[str, Any]]:
    """A DynamoGraphDeployment (and a ConfigMap for TensorRT-LLM's option files)."""
    objects: list[dict[str, Any]] = []
    image = DYNAMO_IMAGES[engine]
    options = {name: doc for launch in launches for name, doc in launch.option_files.items()}
    if options:
        import yaml

        objects.append({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{base}-options"},
            "data": {name: yaml.safe_dump(doc, sort_keys=False) for name, doc in options.items()},
        })  # fmt: skip
    services: dict[str, Any] = {
        "Frontend": {
            "dynamoNamespace": base,
            "componentType": "frontend",
            "replicas": 1,
            "extraPodSpec": {"mainContainer": {
                "image": image,
                "command": ["python3", "-m", "dynamo.frontend"],
                "args": ["--http-port", str(FRONTEND_PORT)],
            }},
        }
    }  # fmt: skip
    module = {"vllm": "dynamo.vllm", "sglang": "dynamo.sglang", "trtllm": "dynamo.trtllm"}[engine]
    for launch in launches:
        pool = launch.pool
        main: dict[str, Any] = {
            "image": image,
            "command": ["python3", "-m", module],
            "args": dynamo_worker_args(engine, launch, ctx),
        }
        service: dict[str, Any] = {
            "dynamoNamespace": base,
            "componentType": "worker",
            "replicas": pool.workers,
            # the GPU limit is per node: nodeCount x limit GPUs make one worker
            "resources": {"limits": {"gpu": str(launch.gpus_per_node)}},
            "extraPodSpec": {"mainContainer": main},
        }
        if launch.nodes > 1:
            service["multinode"] = {"nodeCount": launch.nodes}
        if launch.option_files:
            main["volumeMounts"] = [{"name": "options", "mountPath": OPTIONS_MOUNT}]
            service["extraPodSpec"]["volumes"] = [
                {"name": "options", "configMap": {"name": f"{base}-options"}}
            ]
        role = {"agg": "Worker", "prefill": "PrefillWorker", "decode": "DecodeWorker"}[pool.role]
        services[f"{engine.capitalize()}{role}"] = service
    objects.append({
        "apiVersion": "nvidia.com/v1alpha1",
        "kind": "DynamoGraphDeployment",
        "metadata": {"name": base},
        "spec": {"services": services},
    })  # fmt: skip
    return objects

"""Cluster manifests of a deployment: plain Kubernetes, or an NVIDIA Dynamo graph deployment.

Kubernetes (``apps/v1`` Deployment, ``v1`` Service and ConfigMap): one Deployment per pool whose
replicas are the pool's workers and whose pod requests the worker's GPUs (``nvidia.com/gpu``, the
NVIDIA device plugin's resource), running the pool's engine launch; a Service per pool in front of
its workers. A worker with more GPUs than one node holds needs a multi-node launcher
(LeaderWorkerSet, Dynamo multinode) that this export does not write: it says so in ``notes``.

Dynamo (``nvidia.com/v1alpha1`` DynamoGraphDeployment, the shape of Dynamo 0.5's operator
examples): a ``Frontend`` service (``python3 -m dynamo.frontend``) and one worker service per pool
(``python3 -m dynamo.vllm|sglang|trtllm``) with the pool's replicas, GPU limit and engine flags.
"""

from __future__ import annotations

import re
from typing import Any

from planner.export.engines import (
    FRONTEND_PORT,
    Launch,
    PoolContext,
    sglang_args,
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
        container: dict[str, Any] = {
            "name": "engine",
            "image": ENGINE_IMAGES[engine],
            "command": list(launch.program),
            "args": args,
            "ports": [{"name": "http", "containerPort": launch.port}],
            "resources": {
                "requests": {GPU_RESOURCE: pool.gpus_per_worker},
                "limits": {GPU_RESOURCE: pool.gpus_per_worker},
            },
            "readinessProbe": {
                "httpGet": {"path": "/health", "port": launch.port},
                "periodSeconds": 10,
            },
        }
        pod: dict[str, Any] = {"containers": [container]}
        if launch.option_files:
            container["volumeMounts"] = [{"name": "options", "mountPath": OPTIONS_MOUNT}]
            pod["volumes"] = [{"name": "options", "configMap": {"name": config_name}}]
        objects.append({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": pool.workers,
                "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
            },
        })  # fmt: skip
        objects.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": {
                "selector": {"app.kubernetes.io/name": name},
                "ports": [{"name": "http", "port": launch.port, "targetPort": "http"}],
            },
        })  # fmt: skip
    return objects


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
        "--max-batch-size", str(pool.batch),
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
            "resources": {"limits": {"gpu": str(pool.gpus_per_worker)}},
            "extraPodSpec": {"mainContainer": main},
        }
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

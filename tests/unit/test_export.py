"""Deployment export: every generated file parses, and every flag is one the engine documents.

The worked plan's exports are checked in (tests/fixtures/export/<format>/); these tests parse those
files, and check that the export still writes exactly them. Kubernetes objects are validated
against the Kubernetes API's own OpenAPI schemas (kubernetes-validate, strict: unknown fields
fail); the DynamoGraphDeployment, whose CRD schema no package ships, against the schema below,
written from the Dynamo 0.5 operator's CRD for the fields the export writes.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pdplanner.planner.export import EXPORT_FORMATS, ExportError, export_plan
from pdplanner.planner.export.build import commands
from pdplanner.planner.export.flags import (
    UnknownFlagError,
    api_options,
    check_command,
    programs,
    script_commands,
    shell_commands,
)
from pdplanner.planner.serialize import plan_request_from_json, plan_result_from_json
from pdplanner.planner.types import (
    Deployment,
    PlanRequest,
    PlanResult,
    Pool,
    Precision,
    Slo,
    Workload,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "export"
KUBERNETES_VERSION = "1.30.0"

#: The DynamoGraphDeployment fields the export writes (nvidia.com/v1alpha1, Dynamo 0.5.0 CRD
#: nvidia.com_dynamographdeployments.yaml): services by name, each with a component type,
#: replicas, a GPU limit given as a string, and the main container's image, command and args.
_CONTAINER = {
    "type": "object",
    "required": ["image", "command", "args"],
    "properties": {
        "image": {"type": "string", "minLength": 1},
        "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "args": {"type": "array", "items": {"type": "string"}},
        "volumeMounts": {"type": "array"},
    },
    "additionalProperties": False,
}
DYNAMO_GRAPH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "nvidia.com/v1alpha1"},
        "kind": {"const": "DynamoGraphDeployment"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
            },
        },
        "spec": {
            "type": "object",
            "required": ["services"],
            "properties": {
                "services": {
                    "type": "object",
                    "minProperties": 2,
                    "additionalProperties": {
                        "type": "object",
                        "required": ["componentType", "replicas", "extraPodSpec"],
                        "properties": {
                            "dynamoNamespace": {"type": "string"},
                            "componentType": {"enum": ["frontend", "worker", "planner", "main"]},
                            "replicas": {"type": "integer", "minimum": 1},
                            # MultinodeSpec: nodeCount >= 2, the GPU limit then per node
                            "multinode": {
                                "type": "object",
                                "required": ["nodeCount"],
                                "properties": {"nodeCount": {"type": "integer", "minimum": 2}},
                                "additionalProperties": False,
                            },
                            "resources": {
                                "type": "object",
                                "properties": {
                                    "limits": {
                                        "type": "object",
                                        "properties": {
                                            "gpu": {"type": "string", "pattern": "^[1-9][0-9]*$"}
                                        },
                                    }
                                },
                            },
                            "extraPodSpec": {
                                "type": "object",
                                "required": ["mainContainer"],
                                "properties": {
                                    "mainContainer": _CONTAINER,
                                    "volumes": {"type": "array"},
                                },
                                "additionalProperties": False,
                            },
                        },
                        "additionalProperties": False,
                    },
                }
            },
        },
    },
}


#: The LeaderWorkerSet fields the export writes (leaderworkerset.x-k8s.io/v1, kubernetes-sigs/lws
#: api/leaderworkerset/v1/leaderworkerset_types.go): replicas (groups), and a template with the
#: group size and the leader's and workers' pod templates (validated as PodTemplates below).
_POD_TEMPLATE = {"type": "object", "required": ["spec"]}
LEADER_WORKER_SET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "leaderworkerset.x-k8s.io/v1"},
        "kind": {"const": "LeaderWorkerSet"},
        "metadata": DYNAMO_GRAPH_SCHEMA["properties"]["metadata"],
        "spec": {
            "type": "object",
            "required": ["leaderWorkerTemplate"],
            "properties": {
                "replicas": {"type": "integer", "minimum": 1},
                "leaderWorkerTemplate": {
                    "type": "object",
                    "required": ["workerTemplate", "size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 2},
                        "leaderTemplate": _POD_TEMPLATE,
                        "workerTemplate": _POD_TEMPLATE,
                    },
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
    },
}


def _stored() -> tuple[PlanRequest, PlanResult, str]:
    stored = json.loads((FIXTURES / "worked_plan.json").read_text())
    return (
        plan_request_from_json(stored["request"]),
        plan_result_from_json(stored["result"]),
        stored["name"],
    )


def _validate_documents(path: Path, text: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    assert docs, f"{path}: no YAML documents"
    for doc in docs:
        if doc["kind"] == "DynamoGraphDeployment":
            jsonschema.validate(doc, DYNAMO_GRAPH_SCHEMA)
        elif doc["kind"] == "LeaderWorkerSet":
            jsonschema.validate(doc, LEADER_WORKER_SET_SCHEMA)
            template = doc["spec"]["leaderWorkerTemplate"]
            for role in ("leaderTemplate", "workerTemplate"):
                pod = {"apiVersion": "v1", "kind": "PodTemplate",
                       "metadata": {"name": f"{doc['metadata']['name']}-{role.lower()}"},
                       "template": template[role]}  # fmt: skip
                kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
        else:
            assert doc["kind"] in {"Deployment", "Service", "ConfigMap"}, doc["kind"]
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        if doc["kind"] == "ConfigMap":  # TensorRT-LLM option files
            for name, body in doc["data"].items():
                _check_api_options(name, yaml.safe_load(body))
    return docs


def _dotted(doc: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in doc.items():
        if isinstance(v, dict):
            keys += _dotted(v, f"{prefix}{k}.")
        else:
            keys.append(f"{prefix}{k}")
    return keys


def _check_api_options(name: str, doc: dict[str, Any]) -> None:
    unknown = set(_dotted(doc)) - set(api_options("tensorrt-llm"))
    assert not unknown, f"{name}: keys TensorRT-LLM 1.0 does not document: {sorted(unknown)}"


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_checked_in_export_of_the_worked_plan_parses(fmt: str) -> None:
    folder = FIXTURES / fmt
    files = sorted(folder.iterdir())
    assert "benchmark.sh" in {f.name for f in files}
    checked = 0
    for path in files:
        text = path.read_text()
        if path.suffix == ".sh":
            lines = _without_heredocs(text)
            for line in shell_commands(lines):
                check_command(line)
                checked += 1
            for name, body in _heredocs(text).items():
                if name.startswith("extra-llm-api-"):
                    _check_api_options(name, yaml.safe_load(body))
        else:
            for doc in _validate_documents(path, text):
                for container in _containers(doc):
                    for line in _container_commands(container):
                        check_command(line)
                        checked += 1
    assert checked >= 2  # at least one engine or manifest command, and the benchmark


def _heredocs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    name, body = None, []
    for line in text.splitlines():
        if name is not None:
            if line == "YAML":
                out[name], name, body = "\n".join(body), None, []
            else:
                body.append(line)
        elif line.startswith("cat > ") and line.endswith("<<'YAML'"):
            name = line.split()[2]
    return out


def _without_heredocs(text: str) -> str:
    kept, inside = [], False
    for line in text.splitlines():
        if inside:
            inside = line != "YAML"
        elif line.startswith("cat > ") and line.endswith("<<'YAML'"):
            inside = True
        else:
            kept.append(line)
    return "\n".join(kept)


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "Deployment":
        return list(doc["spec"]["template"]["spec"]["containers"])
    if doc["kind"] == "LeaderWorkerSet":
        template = doc["spec"]["leaderWorkerTemplate"]
        return [c for role in ("leaderTemplate", "workerTemplate")
                for c in template[role]["spec"]["containers"]]  # fmt: skip
    if doc["kind"] == "DynamoGraphDeployment":
        return [s["extraPodSpec"]["mainContainer"] for s in doc["spec"]["services"].values()]
    return []


def _container_commands(container: dict[str, Any]) -> list[str]:
    words = container["command"] + container.get("args", [])
    if words[:2] == ["sh", "-c"]:
        return script_commands(words[2])
    return [shlex.join(words)]


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_writes_exactly_the_checked_in_files(fmt: str) -> None:
    request, result, name = _stored()
    export = export_plan(request, result, fmt, name)
    written = {f.path: f.content for f in export.files}
    checked_in = {p.name: p.read_text() for p in (FIXTURES / fmt).iterdir()}
    assert written == checked_in, "run `python -m tools.write_export_fixtures` and review the diff"


def test_worked_plan_pools_become_engine_flags() -> None:
    request, result, name = _stored()
    assert result.best is not None
    prefill, decode = sorted(result.best.pools, key=lambda p: p.role != "prefill")
    export = export_plan(request, result, "vllm", name)
    launched = [check_command(c)[1] for c in commands(export) if c.startswith("vllm serve")]
    assert [g["--tensor-parallel-size"] for g in launched] == [str(prefill.tp), str(decode.tp)]
    assert [g["--pipeline-parallel-size"] for g in launched] == [str(prefill.pp), str(decode.pp)]
    assert [g["--max-num-seqs"] for g in launched] == [str(prefill.batch), str(decode.batch)]
    assert launched[0]["--max-num-batched-tokens"] == str(prefill.batch * 4000)
    assert all(g["--gpu-memory-utilization"] == "0.90" for g in launched)
    assert all("NixlConnector" in (g["--kv-transfer-config"] or "") for g in launched)
    bench = check_command(export.benchmark_command)[1]
    assert bench["--random-input-len"] == "4000" and bench["--random-output-len"] == "500"
    assert float(bench["--request-rate"] or 0) == pytest.approx(
        result.best.requests_per_s, abs=1e-3
    )


def test_kubernetes_deployments_request_the_workers_gpus() -> None:
    request, result, name = _stored()
    assert result.best is not None
    export = export_plan(request, result, "k8s", name)
    docs = list(yaml.safe_load_all(export.files[0].content))
    deployments = {d["metadata"]["labels"]["pdplanner.dev/role"]: d for d in docs
                   if d["kind"] == "Deployment"}  # fmt: skip
    for pool in result.best.pools:
        spec = deployments[pool.role]["spec"]
        assert spec["replicas"] == pool.workers
        limits = spec["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == pool.tp * pool.pp * pool.attention_dp


def _moe_agg_plan(kv_dtype: str = "fp8") -> tuple[PlanRequest, PlanResult]:
    request = PlanRequest(
        "deepseek-v3", "h200-sxm", 16, (Workload(2000, 1000),), Slo(2000, 50),
        precision=Precision(dtype="fp8", kv_dtype=kv_dtype), engine="sglang",
    )  # fmt: skip
    pool = Pool("agg", "h200-sxm", tp=1, pp=1, ep=8, attention_dp=8, batch=256, workers=2,
                chunk_tokens=4096)  # fmt: skip
    best = Deployment("agg", (pool,), 500.0, 40.0, 900.0, 25.0, 10.0, 16)
    result = PlanResult(best, best, None, None, (), (), 1, 1.0)
    return request, result


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_moe_aggregated_plan_exports_in_every_format(fmt: str) -> None:
    request, result = _moe_agg_plan()
    export = export_plan(request, result, fmt, "plans/abc")
    lines = commands(export)
    assert lines and all(check_command(line) for line in lines)
    for f in export.files:
        if f.path.endswith(".yaml"):
            _validate_documents(Path(f.path), f.content)
    text = "\n".join(f.content for f in export.files)
    if fmt == "sglang":
        given = check_command(lines[0])[1]
        assert given["--tp-size"] == "8" and given["--dp-size"] == "8"
        assert given["--ep-size"] == "8" and "--enable-dp-attention" in given
        assert given["--kv-cache-dtype"] == "fp8_e4m3" and given["--chunked-prefill-size"] == "4096"
        # the fraction SGLang derives by default for this layout, which the plan priced its KV
        # cache at, written out so a different chunk size cannot change it: TP 8 over 8
        # DP-attention ranks on an H200 reserve 33,280 of 143,771 MiB
        assert given["--mem-fraction-static"] == "0.769"
    if fmt == "sglang":
        # SGLang's max_running_requests is the worker's total, divided over its DP ranks
        assert check_command(lines[0])[1]["--max-running-requests"] == "256"
    if fmt == "vllm":
        given = check_command(lines[0])[1]
        # vLLM's max_num_seqs bounds each DP rank's scheduler: 256 over 8 ranks
        assert given["--max-num-seqs"] == "32"
        assert given["--data-parallel-size"] == "8" and "--enable-expert-parallel" in given
        assert given["--kv-cache-dtype"] == "fp8" and "--kv-transfer-config" not in given
    if fmt == "trtllm":
        assert "dtype: fp8" in text and "enable_attention_dp: true" in text
        assert check_command(lines[0])[1]["--max_batch_size"] == "32"  # per attention-DP rank


def test_another_engines_format_keeps_its_own_memory_default_and_says_so() -> None:
    """A plan priced for SGLang exported for vLLM: the knobs mean different things (SGLang's
    share holds weights and KV only, vLLM's everything), so the launch carries vLLM's default
    and a note names the engine the predictions are for; the same-engine export pins the plan's
    derived SGLang fraction."""
    request, result = _moe_agg_plan()
    as_vllm = export_plan(request, result, "vllm", "plans/abc")
    given = check_command(commands(as_vllm)[0])[1]
    assert given["--gpu-memory-utilization"] == "0.90"
    assert any("priced for sglang" in n for n in as_vllm.notes), as_vllm.notes
    as_sglang = export_plan(request, result, "sglang", "plans/abc")
    assert not any("priced for" in n for n in as_sglang.notes)


def test_a_flag_outside_the_table_is_refused() -> None:
    with pytest.raises(UnknownFlagError, match="--tensor-parallel"):
        check_command("vllm serve m --tensor-parallel 2")
    with pytest.raises(UnknownFlagError, match="needs a value"):
        check_command("vllm serve m --max-num-seqs")
    with pytest.raises(UnknownFlagError, match="takes no value"):
        check_command("vllm serve m --enable-expert-parallel=1")
    with pytest.raises(UnknownFlagError, match="not a program"):
        check_command("llama-server -m x")


def test_unknown_format_and_plan_without_deployment_are_errors() -> None:
    request, result, name = _stored()
    with pytest.raises(ExportError) as err:
        export_plan(request, result, "helm", name)
    assert err.value.field == "format" and "vllm" in err.value.reason
    empty = PlanResult(None, None, None, None, (), (), 0, 1.0, reason="TPOT 1 ms: no batch fits")
    with pytest.raises(ExportError) as err:
        export_plan(request, empty, "vllm", name)
    assert err.value.field == "name" and "TPOT 1 ms" in err.value.reason


def test_the_plans_engine_args_set_the_budget_memory_fraction_and_kv_dtype() -> None:
    request, result = _moe_agg_plan(kv_dtype="bf16")
    args = (("max_num_batched_tokens", 4096), ("gpu_memory_utilization", 0.85),
            ("kv_cache_dtype", "fp8"))  # fmt: skip
    request = dataclasses.replace(request, engine="vllm", engine_args=args)
    # an agg pool the search simulated without chunked prefill (chunk_tokens None): each step
    # takes whole prompts, at the request's budget (above the 3,000-token longest request)
    pool = dataclasses.replace(result.best.pools[0], chunk_tokens=None)
    best = dataclasses.replace(result.best, pools=(pool,))
    result = dataclasses.replace(result, best=best)
    export = export_plan(request, result, "vllm", "plans/abc")
    given = check_command(commands(export)[0])[1]
    assert given["--max-num-batched-tokens"] == "4096"
    assert "--no-enable-chunked-prefill" in given and "--enable-chunked-prefill" not in given
    assert given["--gpu-memory-utilization"] == "0.85"
    assert given["--kv-cache-dtype"] == "fp8"
    sglang = check_command(commands(export_plan(request, result, "sglang", "plans/abc"))[0])[1]
    assert sglang["--chunked-prefill-size"] == "-1"
    trtllm = export_plan(request, result, "trtllm", "plans/abc")
    assert "enable_chunked_prefill: false" in "\n".join(f.content for f in trtllm.files)


def test_every_program_names_the_source_its_flags_were_checked_in() -> None:
    for program in programs():
        assert program.source, f"{program.command}: no source recorded"
        assert program.flags or program.runs_command or program.engine == "sglang", program


def test_launchers_are_checked_through_to_the_program_they_run() -> None:
    line = ("mpirun --allow-run-as-root -np 16 -H a:8,b:8 trtllm-llmapi-launch trtllm-serve m "
            "--tp_size 16")  # fmt: skip
    program, given = check_command(line)
    assert program.command == "trtllm-serve" and given == {"--tp_size": "16"}
    with pytest.raises(UnknownFlagError, match="--tensor-parallel-size"):
        check_command("mpirun -np 2 trtllm-llmapi-launch trtllm-serve m --tensor-parallel-size 2")
    with pytest.raises(UnknownFlagError, match="no command to run"):
        check_command("mpirun -np 2")


def test_dynamo_vllm_takes_the_engine_flags_but_not_the_servers() -> None:
    given = check_command("python3 -m dynamo.vllm --model m --tensor-parallel-size 8")[1]
    assert given == {"--model": "m", "--tensor-parallel-size": "8"}
    with pytest.raises(UnknownFlagError, match="--port"):  # dynamo.vllm has no HTTP server flags
        check_command("python3 -m dynamo.vllm --model m --port 8000")


def _tp16_plan(engine: str) -> tuple[PlanRequest, PlanResult]:
    """DeepSeek-R1 on 2 x 8 H100, one aggregated TP16 worker: wider than one node."""
    request = PlanRequest(
        "deepseek-r1", "h100-sxm", 16, (Workload(4000, 500),), Slo(2000, 50),
        precision=Precision(dtype="fp8", kv_dtype="fp8"), engine=engine,
    )  # fmt: skip
    pool = Pool("agg", "h100-sxm", tp=16, pp=1, ep=16, attention_dp=1, batch=64, workers=1,
                chunk_tokens=8192)  # fmt: skip
    best = Deployment("agg", (pool,), 500.0, 40.0, 900.0, 25.0, 2.0, 16)
    return request, PlanResult(best, best, None, None, (), (), 1, 1.0)


def test_a_gb200_worker_spans_compute_trays_of_four_unless_told_otherwise() -> None:
    """An NVL72 rack's hosts are its compute trays of 4 GPUs: an EP8 decode worker on GB200 is
    launched over 2 of them by default; HGX hosts stay 8, and a given gpus_per_node wins."""
    request = PlanRequest(
        "deepseek-v3", "gb200-nvl72", 8, (Workload(1000, 1000),), Slo(2000, 50),
        precision=Precision(dtype="fp8", kv_dtype="fp8"), engine="sglang",
    )  # fmt: skip
    pool = Pool("agg", "gb200-nvl72", tp=8, pp=1, ep=8, attention_dp=1, batch=64, workers=1)
    best = Deployment("agg", (pool,), 500.0, 40.0, 900.0, 25.0, 2.0, 8)
    result = PlanResult(best, best, None, None, (), (), 1, 1.0)
    default = export_plan(request, result, "sglang", "plans/v3")
    assert any("spans 2 nodes of 4 GPUs" in note for note in default.notes), default.notes
    given = check_command(commands(default)[0])[1]
    assert given["--nnodes"] == "2"
    whole = export_plan(request, result, "sglang", "plans/v3", gpus_per_node=8)
    assert not any("spans" in note for note in whole.notes)
    hgx = export_plan(*_tp16_plan("sglang"), "sglang", "plans/r1")
    assert any("spans 2 nodes of 8 GPUs" in note for note in hgx.notes)
    # each pool on its own GPU's hosts: GB200 prefill in trays of 4, H200 decode on HGX 8s
    mixed_req = dataclasses.replace(request, decode_gpu="h200-sxm")
    pre = Pool("prefill", "gb200-nvl72", tp=8, pp=1, ep=8, attention_dp=1, batch=1, workers=1)
    dec = Pool("decode", "h200-sxm", tp=8, pp=1, ep=8, attention_dp=1, batch=64, workers=1)
    both = Deployment("disagg", (pre, dec), 500.0, 40.0, 900.0, 25.0, 2.0, 16)
    mixed = export_plan(
        mixed_req, PlanResult(both, None, both, None, (), (), 1, 1.0), "sglang", "plans/mx"
    )
    spans = [note for note in mixed.notes if "spans" in note]
    assert spans == ["a prefill worker spans 2 nodes of 4 GPUs: the files start it on each node"]


def _parsed(fmt: str, engine: str) -> tuple[list[str], dict[str, str]]:
    request, result = _tp16_plan(engine)
    export = export_plan(request, result, fmt, "plans/r1")
    files = {f.path: f.content for f in export.files}
    for path, text in files.items():
        if path.endswith(".yaml"):
            _validate_documents(Path(path), text)
    lines = commands(export)
    assert lines and all(check_command(line) for line in lines)
    assert any("spans 2 nodes of 8 GPUs" in note for note in export.notes)
    return lines, files


def test_a_tp16_worker_on_8_gpu_nodes_is_a_ray_cluster_under_vllm() -> None:
    lines, _ = _parsed("vllm", "vllm")
    assert lines[:2] == ["ray start --head --port 6379",
                         "ray start --address HEAD_NODE:6379 --block"]  # fmt: skip
    given = check_command(lines[2])[1]
    assert given["--tensor-parallel-size"] == "16"
    assert given["--distributed-executor-backend"] == "ray"


def test_a_tp16_worker_runs_on_each_node_with_its_rank_under_sglang() -> None:
    lines, files = _parsed("sglang", "sglang")
    given = check_command(lines[0])[1]
    assert given["--tp-size"] == "16" and given["--nnodes"] == "2"
    assert given["--node-rank"] == "$NODE_RANK"  # expanded by the shell on each node
    assert given["--dist-init-addr"] == "HEAD_NODE:5000"
    assert '--node-rank "$NODE_RANK"' in files["launch.sh"]


def test_a_tp16_worker_is_one_mpi_job_over_both_nodes_under_trtllm() -> None:
    lines, _ = _parsed("trtllm", "trtllm")
    assert lines[0].startswith(
        "mpirun --allow-run-as-root -np 16 -H HEAD_NODE:8,NODE_1:8 trtllm-llmapi-launch "
        "trtllm-serve deepseek-ai/DeepSeek-R1"
    )
    assert check_command(lines[0])[1]["--tp_size"] == "16"


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_a_tp16_worker_is_a_leader_worker_set_of_two_8_gpu_pods(engine: str) -> None:
    lines, files = _parsed("k8s", engine)
    docs = list(yaml.safe_load_all(files["deployment.yaml"]))
    (lws,) = [d for d in docs if d["kind"] == "LeaderWorkerSet"]
    assert not [d for d in docs if d["kind"] == "Deployment"]
    template = lws["spec"]["leaderWorkerTemplate"]
    assert lws["spec"]["replicas"] == 1 and template["size"] == 2
    for role in ("leaderTemplate", "workerTemplate"):
        (container,) = template[role]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert service["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    if engine == "vllm":
        assert lines[0] == "ray start --head --port 6379"
        # Kubernetes expands $(LWS_LEADER_ADDRESS) in the worker's args
        assert check_command(lines[2])[1] == {
            "--address": "$(LWS_LEADER_ADDRESS):6379",
            "--block": None,
        }
    else:
        given = check_command(lines[0])[1]
        assert given["--node-rank"] == "$(LWS_WORKER_INDEX)"
        assert given["--dist-init-addr"] == "$(LWS_LEADER_ADDRESS):5000"


def test_a_multi_node_trtllm_worker_is_not_written_as_plain_manifests() -> None:
    request, result = _tp16_plan("trtllm")
    with pytest.raises(ExportError, match="mpirun") as err:
        export_plan(request, result, "k8s", "plans/r1")
    assert err.value.field == "format"


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_a_tp16_worker_is_a_two_node_dynamo_service(engine: str) -> None:
    _, files = _parsed("dynamo", engine)
    (graph,) = [d for d in yaml.safe_load_all(files["dynamo-graph.yaml"])
                if d["kind"] == "DynamoGraphDeployment"]  # fmt: skip
    workers = [s for s in graph["spec"]["services"].values() if s["componentType"] == "worker"]
    assert [(w["multinode"], w["resources"]["limits"]["gpu"]) for w in workers] == [
        ({"nodeCount": 2}, "8")
    ]


def test_a_worker_that_does_not_split_evenly_over_nodes_is_an_error() -> None:
    request, result = _tp16_plan("sglang")
    with pytest.raises(ExportError, match="does not split evenly") as err:
        export_plan(request, result, "sglang", "plans/r1", gpus_per_node=6)
    assert err.value.field == "gpus_per_node"  # the request's value, not the plan, is at fault


def test_tensorrt_llm_decode_pools_pad_to_the_cuda_graphs_the_plan_priced() -> None:
    """The plan prices a decode batch as the next captured CUDA graph up to the scheduler's
    cuda_graph_max_bs (128 for TensorRT-LLM) and as an eager step past it. TensorRT-LLM pads
    to a captured size only with ``enable_padding`` (off by default), so the export turns it on
    and captures up to the smaller of the rank's batch and that limit; a prefill pool, which
    does not decode, gets no graph settings."""
    _, files = _parsed("trtllm", "trtllm")  # one aggregated TP16 worker
    worked = (FIXTURES / "trtllm" / "launch.sh").read_text()  # the README's disagg plan
    roles = []
    for script in (files["launch.sh"], worked):
        for name, body in _heredocs(script).items():
            if not name.startswith("extra-llm-api-"):
                continue
            doc = yaml.safe_load(body)
            if "prefill" in name:
                assert "cuda_graph_config" not in doc, name
            else:
                graphs = doc["cuda_graph_config"]
                assert graphs["enable_padding"] is True, name
                assert 1 <= graphs["max_batch_size"] <= 128, name
            roles.append(name)
    assert sorted(roles) == [
        "extra-llm-api-agg.yaml",
        "extra-llm-api-decode.yaml",
        "extra-llm-api-prefill.yaml",
    ]

"""A plan as the files that run it: engine launch commands, cluster manifests and a benchmark.

``export_plan(request, result, fmt)`` turns a stored plan's chosen deployment into the files of one
format:

- ``vllm``, ``sglang``, ``trtllm``: ``launch.sh`` with the engine's launch command for every pool
  (parallelism, batch limit, token budget, memory fraction, KV-cache precision, and for a
  disaggregated plan the KV-transfer connector and the router that joins the pools), plus the
  engine's option files where it has them (TensorRT-LLM's ``extra_llm_api_options`` YAML);
- ``k8s``: ``deployment.yaml``, a Kubernetes Deployment per pool (replicas = workers, GPU requests
  = GPUs per worker) running the request's engine, a Service per pool, and a ConfigMap for
  option files;
- ``dynamo``: ``dynamo-graph.yaml``, an NVIDIA Dynamo ``DynamoGraphDeployment`` (a frontend and
  one worker service per pool) running the request's engine;

and in every format ``benchmark.sh``, the ``vllm bench serve`` command that checks the plan's
predictions (random prompts of the plan's ISL/OSL, Poisson arrivals at the predicted request
rate, TTFT/TPOT percentiles), with the predicted figures beside it.

Every flag written is checked against ``pdplanner/planner/export/data/engine_flags.yaml`` (the
engines' documented flags at a stated version) before the files are returned.

Errors: ``ExportError`` (an ``InvalidInputError`` on ``format`` or ``name``) for an unknown format
or a plan without a chosen deployment.
"""

from pdplanner.planner.export.build import (
    EXPORT_FORMATS,
    ExportedFile,
    ExportError,
    PlanExport,
    export_plan,
)

__all__ = ["EXPORT_FORMATS", "ExportError", "ExportedFile", "PlanExport", "export_plan"]

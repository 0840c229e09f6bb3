"""Checks of request fields that need no catalog, and of parallelism against a model.

Every check raises ``InvalidInputError(field, reason)`` with the field's path in the request
dataclass (``parallelism.tp``, ``prefill.batch``, ``slo.ttft_ms``), which the CLI maps to a flag
and the gRPC layer to a ``BadRequest`` field violation.
"""

from __future__ import annotations

import math

from planner.catalog import ModelSpec
from planner.errors import InvalidInputError
from planner.types import Parallelism

MAX_TOKENS = 10_000_000  # longer than any context window in the catalog by far
MAX_BATCH = 1_000_000
MAX_PARALLEL = 4096
#: The largest GPU budget a search takes. Search work grows with the budget (rate matching tries
#: every whole prefill worker count), so the budget is capped at a size no single deployment of
#: one model reaches: the largest NVLink domain sold is 72 GPUs (GB200 NVL72, the catalog's
#: gb200-nvl72), an HGX node holds 8, and the largest clusters built (about 100,000 to 200,000
#: GPUs) serve many models and training jobs at once. 16,384 GPUs is 227 NVL72 racks or 2,048
#: HGX nodes, for one model's deployment.
MAX_GPUS = 16_384
#: The most traffic classes of one mix: each class is priced separately at the prefill pool,
#: and real mixes are summarised by a handful of (isl, osl) points.
MAX_TRAFFIC_CLASSES = 64


def integer(value: object, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(field, f"must be an integer, got {value!r}")
    if value < lo:
        raise InvalidInputError(field, f"must be at least {lo}, got {value}")
    if value > hi:
        raise InvalidInputError(field, f"must be at most {hi:,}, got {value:,}")
    return value


def number(value: object, field: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError(field, f"must be a finite number, got {value!r}")
    if value < lo or (lo_open and value == lo):
        raise InvalidInputError(
            field, f"must be {'greater than' if lo_open else 'at least'} {lo:g}, got {value:g}"
        )
    if value > hi:
        raise InvalidInputError(field, f"must be at most {hi:g}, got {value:g}")
    return float(value)


def lengths(isl: object, osl: object, prefix: str = "") -> None:
    integer(isl, f"{prefix}isl", 1, MAX_TOKENS)
    integer(osl, f"{prefix}osl", 1, MAX_TOKENS)


def parallelism(par: Parallelism, model: ModelSpec, field: str = "parallelism") -> None:
    """TP must split the attention heads; EP and attention DP only for mixture-of-experts models."""
    tp = integer(par.tp, f"{field}.tp", 1, MAX_PARALLEL)
    pp = integer(par.pp, f"{field}.pp", 1, MAX_PARALLEL)
    ep = integer(par.ep, f"{field}.ep", 1, MAX_PARALLEL)
    dp = integer(par.attention_dp, f"{field}.attention_dp", 1, MAX_PARALLEL)
    if model.num_heads % tp:
        raise InvalidInputError(
            f"{field}.tp",
            f"{tp} does not divide the {model.num_heads} attention heads of {model.name}",
        )
    if pp > model.num_layers:
        raise InvalidInputError(
            f"{field}.pp", f"{pp} stages exceed the {model.num_layers} layers of {model.name}"
        )
    if not model.is_moe:
        if ep > 1:
            raise InvalidInputError(
                f"{field}.ep",
                f"{model.name} is dense: expert parallelism needs a mixture-of-experts model",
            )
        if dp > 1:
            raise InvalidInputError(
                f"{field}.attention_dp",
                f"{model.name} is dense: attention data parallelism applies to MoE models",
            )
        return
    if model.num_experts % ep:
        raise InvalidInputError(
            f"{field}.ep", f"{ep} does not divide the {model.num_experts} experts of {model.name}"
        )
    if (tp * dp) % ep:
        raise InvalidInputError(
            f"{field}.ep",
            f"must divide tp x attention_dp = {tp * dp} (the GPUs of one pipeline stage)",
        )

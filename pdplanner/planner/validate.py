"""Checks of request fields that need no catalog, and of parallelism against a model.

Every check raises ``InvalidInputError(field, reason)`` with the field's path in the request
dataclass (``parallelism.tp``, ``prefill.batch``, ``slo.ttft_ms``), which the CLI maps to a flag
and the gRPC layer to a ``BadRequest`` field violation. A request is checked with ``Violations``,
which runs independent checks to the end and raises all that failed at once (``InvalidFields``),
so a client learns every bad field of a request in one answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from pdplanner.planner.catalog import ModelSpec
from pdplanner.planner.errors import InvalidFields, InvalidInputError
from pdplanner.planner.types import Parallelism

T = TypeVar("T")

MAX_TOKENS = 10_000_000  # longer than any context window in the catalog by far
MAX_BATCH = 1_000_000
MAX_PARALLEL = 4096
#: The most workers of one pool of a fixed deployment (``estimate``'s xPyD pools, ``simulate``).
MAX_POOL_WORKERS = 100_000
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


class Violations:
    """Collects the violations of independent checks, so that a request reports all of them."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []
        self._caught: list[InvalidInputError] = []

    def add(self, field: str, reason: str) -> None:
        self.found.append((field, reason))

    @contextmanager
    def check(self) -> Iterator[None]:
        """Record an ``InvalidInputError`` raised in the block instead of raising it."""
        try:
            yield
        except InvalidInputError as exc:
            self.found.extend(exc.violations)
            self._caught.append(exc)

    def value(self, make: Callable[[], T]) -> T | None:
        """``make()``, or None (and the violation recorded) when it raises ``InvalidInputError``."""
        with self.check():
            return make()
        return None

    def raise_any(self) -> None:
        """Raise every violation found (several at once as ``InvalidFields``). A single one
        caught from a check is raised as it was (an ``UnknownEntryError`` keeps its ``known``)."""
        if len(self.found) == 1:
            if self._caught:
                raise self._caught[0]
            raise InvalidInputError(*self.found[0])
        if self.found:
            raise InvalidFields(self.found)


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
    """Prompt (``isl``) and output (``osl``) lengths in tokens; both are checked."""
    v = Violations()
    v.value(lambda: integer(isl, f"{prefix}isl", 1, MAX_TOKENS))
    v.value(lambda: integer(osl, f"{prefix}osl", 1, MAX_TOKENS))
    v.raise_any()


def within_context(model: ModelSpec, isl: int, osl: int, prefix: str = "") -> None:
    """A request's prompt and answer fit the model's context (``ModelSpec.max_context``, tokens;
    0: not known, not checked). Call on lengths that passed ``lengths``."""
    if model.max_context <= 0 or isl + osl <= model.max_context:
        return
    field = f"{prefix}isl" if isl >= model.max_context else f"{prefix}osl"
    raise InvalidInputError(
        field,
        f"isl + osl = {isl + osl:,} tokens exceed {model.name}'s context of "
        f"{model.max_context:,} tokens",
    )


def pool(
    par: Parallelism, workers: object, batch: object, model: ModelSpec | None, field: str
) -> None:
    """One pool of a fixed disaggregated deployment, as ``estimate --mode disagg`` checks it:
    its layout against the model (``parallelism``, on ``{field}.parallelism``), 1 to
    ``MAX_POOL_WORKERS`` workers (``{field}.workers``) and a batch limit of 1 to ``MAX_BATCH``
    (``{field}.batch``); every violation is reported at once."""
    v = Violations()
    with v.check():
        parallelism(par, model, f"{field}.parallelism")
    v.value(lambda: integer(workers, f"{field}.workers", 1, MAX_POOL_WORKERS))
    v.value(lambda: integer(batch, f"{field}.batch", 1, MAX_BATCH))
    v.raise_any()


def parallelism(par: Parallelism, model: ModelSpec | None, field: str = "parallelism") -> None:
    """TP must split the attention heads; EP and attention DP only for mixture-of-experts models.

    Every degree is range-checked; the checks that combine degrees run on those in range, and
    those against the model only when there is one (``None``: its name did not resolve).
    """
    v = Violations()
    tp = v.value(lambda: integer(par.tp, f"{field}.tp", 1, MAX_PARALLEL))
    pp = v.value(lambda: integer(par.pp, f"{field}.pp", 1, MAX_PARALLEL))
    ep = v.value(lambda: integer(par.ep, f"{field}.ep", 1, MAX_PARALLEL))
    dp = v.value(lambda: integer(par.attention_dp, f"{field}.attention_dp", 1, MAX_PARALLEL))
    if model is None:
        v.raise_any()
        return
    if tp is not None and model.num_heads % tp:
        v.add(
            f"{field}.tp",
            f"{tp} does not divide the {model.num_heads} attention heads of {model.name}",
        )
    if pp is not None and pp > model.num_layers:
        v.add(f"{field}.pp", f"{pp} stages exceed the {model.num_layers} layers of {model.name}")
    if not model.is_moe:
        if ep is not None and ep > 1:
            v.add(
                f"{field}.ep",
                f"{model.name} is dense: expert parallelism needs a mixture-of-experts model",
            )
        if dp is not None and dp > 1:
            v.add(
                f"{field}.attention_dp",
                f"{model.name} is dense: attention data parallelism applies to MoE models",
            )
    elif ep is not None:
        if model.num_experts % ep:
            v.add(
                f"{field}.ep",
                f"{ep} does not divide the {model.num_experts} experts of {model.name}",
            )
        elif tp is not None and dp is not None and (tp * dp) % ep:
            v.add(
                f"{field}.ep",
                f"must divide tp x attention_dp = {tp * dp} (the GPUs of one pipeline stage)",
            )
    v.raise_any()

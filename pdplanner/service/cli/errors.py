"""The CLI's own failure: one line on stderr and an exit status (2: bad command line, 1: other)."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

from pdplanner.planner.errors import InvalidFields, InvalidInputError
from pdplanner.service.cli import inputs

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CliError(Exception):
    """A failure to report as one line on stderr, with the process exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@contextmanager
def flags(known: Collection[str], **kwargs: Any) -> Iterator[None]:
    """Report the planner's invalid-input errors inside the block as errors on these flags."""
    try:
        yield
    except InvalidInputError as exc:
        raise CliError(inputs.describe(exc, known, **kwargs)) from None


@contextmanager
def checkpoint_dtype(given: str | None, used: str) -> Iterator[None]:
    """When ``--dtype`` was not given (``given`` None) and the block's error is on the GEMM
    precision, say that ``used`` is the checkpoint's precision, taken by default, and how to
    plan otherwise: the user never typed the value the error is about."""
    try:
        yield
    except InvalidInputError as exc:
        if given is not None or used == "bf16":
            raise
        hint = f" ({used} is the checkpoint's precision, taken without --dtype; give --dtype bf16)"
        found = [(f, r + hint if f.split(".")[-1] == "dtype" else r) for f, r in exc.violations]
        if found == list(exc.violations):
            raise
        raise InvalidFields(found) from None

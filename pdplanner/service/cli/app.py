"""The ``pdplanner`` command group, its one-line error handling, output and shared options.

Errors are one line on stderr, ``error: --batch: must be at least 1``, with exit status 2 for a
bad command line or request (the planner's field paths are named as the flags that set them) and
1 for anything else (server unreachable, plan not found). Set ``PDPLANNER_DEBUG=1`` to get the
traceback of an unexpected failure instead of its one-line summary.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType
from typer.core import TyperGroup

from pdplanner.planner.errors import InvalidInputError
from pdplanner.service.cli import format as fmt
from pdplanner.service.cli.backend import CREDENTIALS, SERVER_ENV, close_backends
from pdplanner.service.cli.errors import EXIT_FAILURE, EXIT_USAGE, CliError

DEBUG_ENV = "PDPLANNER_DEBUG"


def _click_exception_class() -> type[Exception]:
    """Click's ``ClickException``, whichever click this typer uses (vendored or not)."""
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == "ClickException":
            return cls
    return typer.BadParameter  # pragma: no cover - every click has ClickException


_CLICK_EXCEPTION = _click_exception_class()


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def _err(message: str) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr)


class OneLineErrors(TyperGroup):
    """The top-level command group: every failure leaves as one ``error: ...`` line.

    Click reports usage errors in several lines (usage, hint, boxed message) and typer shows
    tracebacks of anything else; this group runs the command without click's standalone
    handling and prints each kind of failure as a single line instead.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; in standalone mode exit with its status (0, 1 or 2)."""
        if not standalone_mode:
            return super().main(
                args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra
            )
        code = 0
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
            code = rv if isinstance(rv, int) else 0
        except CliError as exc:
            _err(exc.message)
            code = exc.code
        except InvalidInputError as exc:  # a command that did not name its flags
            _err(str(exc))
            code = EXIT_USAGE
        except _CLICK_EXCEPTION as exc:
            code = self._click_error(exc)
        except (KeyboardInterrupt, EOFError, typer.Abort):
            _err("interrupted")
            code = 130
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            what = type(exc).__name__
            _err(f"{what}: {exc} (set {DEBUG_ENV}=1 for the traceback)" if str(exc) else what)
            code = EXIT_FAILURE
        finally:
            close_backends()
        sys.stdout.flush()
        sys.exit(code)

    @staticmethod
    def _click_error(exc: Exception) -> int:
        ctx = getattr(exc, "ctx", None)
        message = exc.format_message()  # type: ignore[attr-defined]
        code: int = getattr(exc, "exit_code", EXIT_FAILURE)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `pdplanner` alone: the help, as click does
            if message:  # typer's rich help has printed itself already
                typer.echo(message, err=True)
            return code
        if ctx is not None:
            message = f"{one_line(message)} (see '{ctx.command_path} --help')"
        _err(message)
        return code


app = typer.Typer(
    cls=OneLineErrors,
    name="pdplanner",
    help="Plan aggregated and disaggregated (prefill/decode) LLM serving deployments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _path_option(flag: str, variable: str, help: str) -> Any:
    return typer.Option(flag, metavar="PATH", help=f"{help} (env {variable}).")


@app.callback()
def credentials(
    token_file: Annotated[
        str | None,
        _path_option(
            "--token-file",
            "PDPLANNER_TOKEN_FILE, or the token in PDPLANNER_TOKEN",
            "Bearer token for --server, read from this file",
        ),
    ] = None,
    tls: Annotated[
        bool, typer.Option("--tls", help="Connect to --server over TLS (env PDPLANNER_TLS=1).")
    ] = False,
    tls_ca_file: Annotated[
        str | None,
        _path_option(
            "--tls-ca-file",
            "PDPLANNER_TLS_CA_FILE",
            "TLS to --server, trusting this PEM CA bundle (default: the system's)",
        ),
    ] = None,
    tls_cert_file: Annotated[
        str | None,
        _path_option(
            "--tls-cert-file",
            "PDPLANNER_TLS_CLIENT_CERT_FILE",
            "This client's PEM certificate, for a server that requires one (mTLS)",
        ),
    ] = None,
    tls_key_file: Annotated[
        str | None,
        _path_option(
            "--tls-key-file",
            "PDPLANNER_TLS_CLIENT_KEY_FILE",
            "The PEM private key of --tls-cert-file",
        ),
    ] = None,
) -> None:
    """Plan aggregated and disaggregated (prefill/decode) LLM serving deployments."""
    CREDENTIALS.token_file = token_file
    CREDENTIALS.tls = tls
    CREDENTIALS.tls_ca_file = tls_ca_file
    CREDENTIALS.tls_cert_file = tls_cert_file
    CREDENTIALS.tls_key_file = tls_key_file


def group(name: str, help: str, **kwargs: Any) -> typer.Typer:
    """A command group of ``pdplanner`` (``pdplanner plans ...``)."""
    sub = typer.Typer(help=help, **kwargs)
    app.add_typer(sub, name=name)
    return sub


#: Width of tables written to a pipe or file (a terminal's own width is used when there is one).
PIPE_WIDTH = 160


def _stdout() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def show(renderable: RenderableType) -> None:
    """Print a table or text to stdout."""
    _stdout().print(renderable)


def show_json(value: Any, *, indent: int | None = 2) -> None:
    """Print strict JSON to stdout."""
    typer.echo(fmt.dumps(value, indent=indent))


# -- options shared by several commands ----------------------------------------------------------

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar=SERVER_ENV,
        show_envvar=False,
        metavar="HOST:PORT",
        help=f"Run against the pdplanner server at HOST:PORT instead of in process (env "
        f"{SERVER_ENV}).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        metavar="bf16|fp8|fp4",
        help="Weight and activation precision (default: the checkpoint's: fp8 for a model named "
        "by its FP8 release, published in FP8 only, or whose config.json quantizes to FP8; else "
        "bf16).",
    ),
]
KvDtypeOpt = Annotated[
    str | None, typer.Option(metavar="bf16|fp8", help="KV-cache precision (default: bf16).")
]
EngineOpt = Annotated[
    str | None,
    typer.Option(metavar="vllm|sglang|trtllm", help="Serving engine profile (default: vllm)."),
]
MemoryFractionOpt = Annotated[
    float | None,
    typer.Option(
        metavar="FRACTION",
        help="The engine's memory fraction, in (0, 1]: vLLM gpu_memory_utilization, SGLang "
        "mem_fraction_static, TensorRT-LLM free_gpu_memory_fraction (default: the engine's).",
    ),
]

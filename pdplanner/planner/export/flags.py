"""The table of engine flags an export may write, and the check of a command line against it.

``pdplanner/planner/export/data/engine_flags.yaml`` lists, per engine and stated version, the
programs an export runs (``vllm serve``, ``trtllm-serve``, ``mpirun``, ...) and the flags each
takes, each checked in the program's own argument definitions (the file names the release artifact
read and, per program, the source file and function). ``check_command`` is what the export and its
tests use to refuse a flag the engine does not document.

Errors: ``UnknownFlagError`` (a ``ValueError``) for a program or flag the table lacks, a switch
given a value or a flag missing its value.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml

FlagKind = Literal["value", "switch"]


class UnknownFlagError(ValueError):
    """A command line that the flag table does not allow."""


@dataclass(frozen=True)
class Program:
    """One program of an engine at a version: its flags, and how many positional arguments."""

    engine: str
    version: str
    command: str  # the words that start it: "vllm serve", "python3 -m sglang.launch_server"
    positional: int
    flags: dict[str, FlagKind]  # its own and those of the flag sets it includes
    source: str = ""  # where the flags were checked: "FILE (function)"
    runs_command: bool = False  # a launcher: its first positional word starts another command


@cache
def _table() -> dict[str, Any]:
    text = (
        resources.files("pdplanner.planner.export")
        .joinpath("data", "engine_flags.yaml")
        .read_text()
    )
    table = yaml.safe_load(text)
    if not isinstance(table, dict):
        raise RuntimeError(
            "pdplanner/planner/export/data/engine_flags.yaml must map engines to programs"
        )
    return table


def engine_version(engine: str) -> str:
    """The engine version whose flags the table holds (``"0.11.0"`` for vllm)."""
    return str(_table()[engine]["version"])


def api_options(engine: str) -> tuple[str, ...]:
    """Dotted keys an engine's YAML options file may hold (TensorRT-LLM's extra options)."""
    return tuple(_table()[engine].get("api_options", ()))


def _flag_kinds(where: str, flags: dict[str, Any] | None) -> dict[str, FlagKind]:
    out: dict[str, FlagKind] = {}
    for name, kind in (flags or {}).items():
        if kind not in ("value", "switch"):
            raise RuntimeError(f"engine_flags.yaml: {where} {name}: kind {kind!r}")
        out[str(name)] = kind
    return out


def _flag_set(qualified: str) -> dict[str, FlagKind]:
    engine, _, name = qualified.partition(".")
    sets = _table().get(engine, {}).get("flag_sets", {})
    if name not in sets:
        raise RuntimeError(f"engine_flags.yaml: no flag set {qualified!r}")
    return _flag_kinds(qualified, sets[name].get("flags"))


@cache
def programs() -> tuple[Program, ...]:
    """Every program of every engine in the table, longest command first (for prefix match)."""
    out = []
    for engine, entry in _table().items():
        for command, spec in entry["programs"].items():
            flags: dict[str, FlagKind] = {}
            for included in spec.get("includes", ()):
                flags.update(_flag_set(included))
            flags.update(_flag_kinds(command, spec.get("flags")))
            out.append(
                Program(
                    engine=engine,
                    version=str(entry["version"]),
                    command=command,
                    positional=int(spec.get("positional", 0)),
                    flags=flags,
                    source=str(spec.get("source", "")),
                    runs_command=bool(spec.get("runs_command", False)),
                )
            )
    return tuple(sorted(out, key=lambda p: -len(p.command.split())))


def program_for(words: list[str]) -> Program:
    """The table's program that ``words`` (a split command line) starts with."""
    for program in programs():
        head = program.command.split()
        if words[: len(head)] == head:
            return program
    raise UnknownFlagError(f"{' '.join(words[:3])}: not a program in the flag table")


def check_command(line: str) -> tuple[Program, dict[str, str | None]]:
    """Split a shell command line, find its program and check every flag against the table.

    Returns the program and the flags given (a switch maps to None). A launcher's command
    (``mpirun ... trtllm-llmapi-launch trtllm-serve ...``) is checked through to the program it
    runs, whose program and flags are returned. Raises ``UnknownFlagError`` naming the flag for an
    undocumented flag, a value missing or a stray positional argument.
    """
    return check_words(shlex.split(line))


def check_words(words: list[str]) -> tuple[Program, dict[str, str | None]]:
    """``check_command`` on a command already split into words."""
    program = program_for(words)
    allowed = program.flags
    rest = words[len(program.command.split()) :]
    given: dict[str, str | None] = {}
    positional = 0
    i = 0
    while i < len(rest):
        word = rest[i]
        if word.startswith("-"):
            name, eq, inline = word.partition("=")
            kind = allowed.get(name)
            if kind is None:
                raise UnknownFlagError(
                    f"{program.command} ({program.engine} {program.version}): {name} "
                    "is not a documented flag"
                )
            if kind == "switch":
                if eq:
                    raise UnknownFlagError(f"{program.command}: {name} takes no value")
                given[name] = None
            elif eq:
                given[name] = inline
            else:
                if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                    raise UnknownFlagError(f"{program.command}: {name} needs a value")
                given[name] = rest[i + 1]
                i += 1
        elif program.runs_command:
            return check_words(rest[i:])
        else:
            positional += 1
            if positional > program.positional:
                raise UnknownFlagError(f"{program.command}: unexpected argument {word!r}")
        i += 1
    if program.runs_command:
        raise UnknownFlagError(f"{program.command}: no command to run")
    return program, given


def script_commands(script: str) -> list[str]:
    """The commands of a ``sh -c`` script: split at ``&&``, a leading ``exec`` dropped."""
    out = []
    for part in script.split("&&"):
        words = part.split()
        if words and words[0] == "exec":
            part = part.strip()[len("exec") :]
        if part.strip():
            out.append(part.strip())
    return out


def shell_commands(script: str) -> list[str]:
    """The command lines of a shell script: continuations joined, comments and blanks dropped,
    a trailing ``&`` removed; lines that only set variables or call shell built-ins are kept
    out (``set``, ``wait``, ``export``, ``cat``, ``echo``)."""
    joined: list[str] = []
    buffer = ""
    for raw in script.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        stripped = buffer.strip()
        buffer = ""
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("&"):
            stripped = stripped[:-1].rstrip()
        if stripped.split()[0] in {"set", "wait", "export", "cat", "echo", "trap", "sleep"}:
            continue
        joined.append(stripped)
    return joined

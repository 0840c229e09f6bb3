"""The Go and TypeScript examples against a real server: they plan the reference query, and what
they print is the plan that GetPlan returns.

Each also runs against a locked server (bearer tokens, TLS and client certificates) with the
``PDPLANNER_TOKEN*`` and ``PDPLANNER_TLS*`` variables the Python client reads: with them it plans,
without the token it fails with UNAUTHENTICATED.

Both need their toolchain (Go with Debian's gRPC sources for clients/go; Node.js with
``npm ci`` run in clients/node). Without it a test is skipped with the reason, unless ``CI`` is
set: there a missing toolchain is a failure, since .ci/run installs both.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pdplanner.client import PlannerClient, Tls
from pdplanner.service.server import start_server
from pdplanner.v1 import common_pb2, plan_pb2
from tests.integration.pki import make_pki

ROOT = Path(__file__).resolve().parents[2]
GO_DIR = ROOT / "clients" / "go"
NODE_DIR = ROOT / "clients" / "node"
RUN_TIMEOUT_S = 240  # a cold `tsc` or `go build` on a loaded machine
TOKEN = secrets.token_hex(32)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason} (CI installs it: see .ci/run)")
    pytest.skip(reason)


def _run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``args`` run in ``cwd``; ``env`` replaces the ``PDPLANNER_*`` variables of this process."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PDPLANNER_")}
    return subprocess.run(
        args, cwd=cwd, env={**clean, **(env or {})}, capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for every example, on a fresh SQLite file; ready (SERVING) when yielded."""
    db = tmp_path_factory.mktemp("server") / "plans.db"
    running = start_server(
        port=0, host="127.0.0.1", database_url=f"sqlite:///{db}", log_level="WARNING"
    )
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        running.stop(0)


@dataclass(frozen=True)
class Locked:
    """A server that wants a token, TLS and a client certificate, and the files to reach it."""

    address: str
    pki: dict[str, Path]
    token_file: Path

    def tls_env(self) -> dict[str, str]:
        return {
            "PDPLANNER_TLS_CA_FILE": str(self.pki["ca"]),
            "PDPLANNER_TLS_CLIENT_CERT_FILE": str(self.pki["client_cert"]),
            "PDPLANNER_TLS_CLIENT_KEY_FILE": str(self.pki["client_key"]),
        }

    def client(self) -> PlannerClient:
        tls = Tls(str(self.pki["ca"]), str(self.pki["client_cert"]), str(self.pki["client_key"]))
        return PlannerClient(self.address, token=TOKEN, tls=tls)


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Locked]:
    out = tmp_path_factory.mktemp("locked")
    pki = make_pki(out)
    token_file = out / "token.txt"
    token_file.write_text(f"\n  {TOKEN}  \n")  # blanks around it, as a hand-written file has
    running = start_server(
        port=0, host="127.0.0.1", database_url=f"sqlite:///{out / 'plans.db'}", auth="on",
        auth_tokens=f"admin:{TOKEN}", tls_cert_file=str(pki["server_cert"]),
        tls_key_file=str(pki["server_key"]), tls_client_ca_file=str(pki["ca"]),
    )  # fmt: skip
    try:
        yield Locked(f"127.0.0.1:{running.port}", pki, token_file)
    finally:
        running.stop(0)


@pytest.fixture(scope="module")
def go_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go example, built once against Debian's vendored sources."""
    if shutil.which("go") is None:
        _unavailable("no `go` on PATH (apt-get install golang-go and the packages in clients/go)")
    vendored = _run(["./vendor-debian.sh"], GO_DIR)
    if vendored.returncode != 0:
        _unavailable(f"clients/go/vendor-debian.sh failed: {vendored.stderr.strip()}")
    binary = tmp_path_factory.mktemp("go") / "example"
    built = _run(["go", "build", "-o", str(binary), "./example"], GO_DIR)
    assert built.returncode == 0, built.stderr
    return binary


@pytest.fixture(scope="module")
def npm() -> str:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        _unavailable("no `node` or `npm` on PATH")
    assert npm is not None
    if not (NODE_DIR / "node_modules" / ".bin" / "tsc").exists():
        _unavailable("clients/node has no node_modules: run `npm ci` there")
    return npm


def _num(x: float) -> str:
    """Shortest round-trip decimal without an exponent: Go's FormatFloat(x, 'f', -1, 64) and
    JavaScript's String(x) for the magnitudes a plan has."""
    return str(np.format_float_positional(x, unique=True, trim="-"))


def expected_output(plan: plan_pb2.Plan) -> str:
    """What both examples print for a stored plan, built from GetPlan's answer."""
    lines = [plan.name]
    if not plan.result.HasField("best"):
        lines.append(f"no deployment meets the SLO: {plan.result.reason}")
        return "\n".join(lines) + "\n"
    best = plan.result.best
    lines.append(
        f"{common_pb2.Mode.Name(best.mode)} on {best.gpus} GPUs: TTFT {_num(best.ttft_ms)} ms, "
        f"TPOT {_num(best.tpot_ms)} ms, {_num(best.tokens_per_s_per_gpu)} tokens/s/GPU, "
        f"{_num(best.tokens_per_s_per_user)} tokens/s/user, {_num(best.requests_per_s)} req/s"
    )
    for pool in best.pools:
        chunk = f", chunk {pool.chunk_tokens} tokens" if pool.HasField("chunk_tokens") else ""
        lines.append(
            f"{plan_pb2.PoolRole.Name(pool.role)}: {pool.workers} x {pool.gpu} TP{pool.tp} "
            f"PP{pool.pp} EP{pool.ep} attention-DP{pool.attention_dp}, batch {pool.batch}{chunk}"
        )
    return "\n".join(lines) + "\n"


def check_prints_the_stored_plan(stdout: str, client: PlannerClient) -> None:
    name = stdout.splitlines()[0]
    assert name.startswith("plans/") and " " not in name
    with client:
        plan = client.get_plan(name, timeout_s=30)
    # The reference query of the issue and the README.
    request = plan.request
    assert (request.model, request.gpu, request.gpus) == ("llama-3.1-70b", "h100-sxm", 16)
    assert [(w.isl, w.osl) for w in request.traffic] == [(4000, 500)]
    assert (request.slo.ttft_ms, request.slo.tpot_ms) == (1000, 20)
    assert plan.result.HasField("best"), plan.result.reason
    assert stdout == expected_output(plan)


def test_the_go_example_prints_the_plan_that_get_plan_returns(
    go_example: Path, address: str
) -> None:
    result = _run([str(go_example), address], GO_DIR)
    assert result.returncode == 0, result.stderr
    check_prints_the_stored_plan(result.stdout, PlannerClient(address))


def test_the_go_example_sends_the_token_and_certificate_of_the_environment(
    go_example: Path, locked: Locked
) -> None:
    env = {**locked.tls_env(), "PDPLANNER_TOKEN": TOKEN}
    result = _run([str(go_example), locked.address], GO_DIR, env)
    assert result.returncode == 0, result.stderr
    check_prints_the_stored_plan(result.stdout, locked.client())


def test_the_go_example_without_a_token_is_unauthenticated(
    go_example: Path, locked: Locked
) -> None:
    result = _run([str(go_example), locked.address], GO_DIR, locked.tls_env())
    assert (result.returncode, result.stdout) == (1, "")
    assert "code = Unauthenticated" in result.stderr, result.stderr


def test_the_go_example_without_an_address_prints_its_usage(go_example: Path) -> None:
    result = _run([str(go_example)], GO_DIR)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "usage: example HOST:PORT\n"


def test_the_typescript_example_prints_the_plan_that_get_plan_returns(
    npm: str, address: str
) -> None:
    result = _run([npm, "run", "--silent", "example", "--", address], NODE_DIR)
    assert result.returncode == 0, result.stderr
    check_prints_the_stored_plan(result.stdout, PlannerClient(address))


def test_the_typescript_example_sends_the_token_and_certificate_of_the_environment(
    npm: str, locked: Locked
) -> None:
    env = {**locked.tls_env(), "PDPLANNER_TOKEN_FILE": str(locked.token_file)}
    result = _run([npm, "run", "--silent", "example", "--", locked.address], NODE_DIR, env)
    assert result.returncode == 0, result.stderr
    check_prints_the_stored_plan(result.stdout, locked.client())


def test_the_typescript_example_without_a_token_is_unauthenticated(
    npm: str, locked: Locked
) -> None:
    result = _run([npm, "run", "--silent", "example", "--", locked.address], NODE_DIR,
                  locked.tls_env())  # fmt: skip
    assert (result.returncode, result.stdout) == (1, "")
    assert "[unauthenticated]" in result.stderr, result.stderr

"""Bearer tokens (two roles), TLS and mutual TLS, with certificates the test makes itself."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdplanner.client import PlannerClient, Tls, credentials_from_env
from pdplanner.service import security
from pdplanner.service.server import RunningServer, start_server
from pdplanner.service.settings import ServerSettings
from pdplanner.v1 import catalog_pb2, plan_pb2, planner_service_pb2_grpc
from tests.integration.pki import make_pki

Stub = planner_service_pb2_grpc.PlannerServiceStub
ADMIN = secrets.token_hex(32)
READER = secrets.token_hex(32)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pdplanner.db'}"


@pytest.fixture
def authed(sqlite_url: str) -> Iterator[RunningServer]:
    running = start_server(
        port=0, host="127.0.0.1", database_url=sqlite_url, auth="on",
        auth_tokens=f"admin:{ADMIN},read:{READER}",
    )  # fmt: skip
    yield running
    running.stop(0)


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return raised.value.code()


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_tokens_and_roles(authed: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{authed.port}") as channel:
        stub = Stub(channel)
        listing = catalog_pb2.ListModelsRequest()
        assert code_of(lambda: stub.ListModels(listing)) == grpc.StatusCode.UNAUTHENTICATED
        wrong = bearer(secrets.token_hex(32))
        assert code_of(lambda: stub.ListModels(listing, metadata=wrong)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert stub.ListModels(listing, metadata=bearer(READER)).models
        delete = plan_pb2.DeletePlanRequest(name="plans/none")
        assert code_of(lambda: stub.DeletePlan(delete, metadata=bearer(READER))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        create = catalog_pb2.CreateGpuRequest(gpu_id="x")
        assert code_of(lambda: stub.CreateGpu(create, metadata=bearer(READER))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        # the admin token passes; the call then fails on its own merits
        assert code_of(lambda: stub.DeletePlan(delete, metadata=bearer(ADMIN))) == (
            grpc.StatusCode.NOT_FOUND
        )
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="pdplanner.v1.PlannerService"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING  # open to balancers


def test_auth_is_on_beyond_loopback_and_needs_tokens(sqlite_url: str) -> None:
    assert security.auth_enabled(ServerSettings(host="[::]"))
    assert security.auth_enabled(ServerSettings(host="0.0.0.0"))
    assert not security.auth_enabled(ServerSettings(host="127.0.0.1"))
    assert not security.auth_enabled(ServerSettings(host="[::1]"))
    assert ServerSettings().host == "127.0.0.1"
    with pytest.raises(ValueError, match="no token is configured"):
        start_server(port=0, host="0.0.0.0", database_url=sqlite_url)


def test_token_files_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "tokens"
    good.write_text(f"# operators\nadmin:{ADMIN}\n\nread:{READER}\n")
    tokens = security.load_tokens(ServerSettings(auth_tokens_file=str(good)))
    assert [t.role for t in tokens] == ["admin", "read"]
    assert ADMIN not in repr(tokens)
    for bad, says in ((f"root:{ADMIN}", "entry 1"), ("admin:short", "at least 32"),
                      (ADMIN, "ROLE:TOKEN")):  # fmt: skip
        with pytest.raises(ValueError, match=says):
            security.parse_tokens(bad, "PDPLANNER_AUTH_TOKENS")


# -- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as files."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _list_models(channel: grpc.Channel) -> int:
    return len(Stub(channel).ListModels(catalog_pb2.ListModelsRequest(), timeout=10).models)


def test_tls_serves_encrypted_calls_only(sqlite_url: str, pki: dict[str, Path]) -> None:
    running = start_server(
        port=0, host="127.0.0.1", database_url=sqlite_url,
        tls_cert_file=str(pki["server_cert"]), tls_key_file=str(pki["server_key"]),
    )  # fmt: skip
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        with grpc.secure_channel(f"localhost:{running.port}", creds) as channel:
            assert _list_models(channel) > 0
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as plain:
            assert code_of(lambda: _list_models(plain)) == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0)


def test_mutual_tls_needs_a_client_certificate(sqlite_url: str, pki: dict[str, Path]) -> None:
    running = start_server(
        port=0, host="127.0.0.1", database_url=sqlite_url,
        tls_cert_file=str(pki["server_cert"]), tls_key_file=str(pki["server_key"]),
        tls_client_ca_file=str(pki["ca"]),
    )  # fmt: skip
    try:
        ca = pki["ca"].read_bytes()
        anonymous = grpc.ssl_channel_credentials(root_certificates=ca)
        with grpc.secure_channel(f"localhost:{running.port}", anonymous) as channel:
            assert code_of(lambda: _list_models(channel)) == grpc.StatusCode.UNAVAILABLE
        known = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=pki["client_key"].read_bytes(),
            certificate_chain=pki["client_cert"].read_bytes(),
        )
        with grpc.secure_channel(f"localhost:{running.port}", known) as channel:
            assert _list_models(channel) > 0
    finally:
        running.stop(0)


def test_tls_settings_name_the_missing_file(sqlite_url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both"):
        security.server_credentials(ServerSettings(tls_cert_file="x.pem"))
    with pytest.raises(ValueError, match="PDPLANNER_TLS_CERT_FILE: cannot read"):
        security.server_credentials(
            ServerSettings(tls_cert_file=str(tmp_path / "no.pem"), tls_key_file="k.pem")
        )


# -- clients that send credentials ----------------------------------------------------------------


@pytest.fixture(scope="module")
def locked(
    tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]
) -> Iterator[RunningServer]:
    """A server with every lock on: tokens, TLS and client certificates."""
    db = tmp_path_factory.mktemp("locked") / "pdplanner.db"
    running = start_server(
        port=0, host="127.0.0.1", database_url=f"sqlite:///{db}", auth="on",
        auth_tokens=f"admin:{ADMIN},read:{READER}",
        tls_cert_file=str(pki["server_cert"]), tls_key_file=str(pki["server_key"]),
        tls_client_ca_file=str(pki["ca"]),
    )  # fmt: skip
    yield running
    running.stop(0)


def _tls(pki: dict[str, Path], *, client_cert: bool = True) -> Tls:
    if not client_cert:
        return Tls(ca_file=str(pki["ca"]))
    return Tls(str(pki["ca"]), str(pki["client_cert"]), str(pki["client_key"]))


def test_the_python_client_sends_its_token_and_certificate(
    locked: RunningServer, pki: dict[str, Path]
) -> None:
    target = f"localhost:{locked.port}"
    with PlannerClient(target, token=READER, tls=_tls(pki), retries=0) as client:
        assert client.list_models()
        with pytest.raises(grpc.RpcError) as denied:
            client.delete_model("models/none")
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with PlannerClient(target, token=ADMIN, tls=_tls(pki), retries=0) as client:
        with pytest.raises(grpc.RpcError) as missing:
            client.delete_model("models/none")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # past auth: no such model
    with PlannerClient(target, tls=_tls(pki), retries=0) as client:
        assert code_of(client.list_models) == grpc.StatusCode.UNAUTHENTICATED
    with PlannerClient(target, token=READER, tls=_tls(pki, client_cert=False), retries=0) as c:
        assert code_of(lambda: c.list_models(timeout_s=10)) == grpc.StatusCode.UNAVAILABLE


def test_the_python_client_reads_its_credentials_from_the_environment(
    locked: RunningServer, pki: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"\n  {READER}  \n")
    env = {"PDPLANNER_TOKEN_FILE": str(token_file), "PDPLANNER_TLS_CA_FILE": str(pki["ca"]),
           "PDPLANNER_TLS_CLIENT_CERT_FILE": str(pki["client_cert"]),
           "PDPLANNER_TLS_CLIENT_KEY_FILE": str(pki["client_key"])}  # fmt: skip
    assert credentials_from_env(env) == (READER, _tls(pki))
    assert credentials_from_env({**env, "PDPLANNER_TOKEN": ADMIN})[0] == ADMIN
    assert credentials_from_env({"PDPLANNER_TLS": "1"}) == (None, Tls())
    assert credentials_from_env({}) == (None, None)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with PlannerClient.from_env(f"localhost:{locked.port}", retries=0) as client:
        assert client.list_models()


def test_bad_client_credentials_are_refused_before_any_call(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs its key"):
        Tls(cert_file="c.pem").channel_credentials()
    with pytest.raises(ValueError, match="ca_file: cannot read"):
        Tls(ca_file=str(tmp_path / "none.pem")).channel_credentials()
    with pytest.raises(ValueError, match="one non-empty line"):
        PlannerClient("localhost:1", token="a\nb")
    empty = tmp_path / "token"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="is empty"):
        credentials_from_env({"PDPLANNER_TOKEN_FILE": str(empty)})


def test_the_cli_talks_to_a_locked_server_with_flags_or_environment(
    locked: RunningServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from pdplanner.service.cli import app

    token_file = tmp_path / "token"
    token_file.write_text(READER + "\n")
    server = f"localhost:{locked.port}"
    flags = ["--token-file", str(token_file), "--tls-ca-file", str(pki["ca"]), "--tls-cert-file",
             str(pki["client_cert"]), "--tls-key-file", str(pki["client_key"])]  # fmt: skip
    plain = CliRunner(env={"PDPLANNER_SERVER": server, "PDPLANNER_TOKEN": None})
    listed = plain.invoke(app, [*flags, "gpus", "--json"])
    assert listed.exit_code == 0, listed.stderr
    assert "h100-sxm" in listed.stdout

    by_env = CliRunner(
        env={
            "PDPLANNER_SERVER": server,
            "PDPLANNER_TOKEN": READER,
            "PDPLANNER_TLS_CA_FILE": str(pki["ca"]),
            "PDPLANNER_TLS_CLIENT_CERT_FILE": str(pki["client_cert"]),
            "PDPLANNER_TLS_CLIENT_KEY_FILE": str(pki["client_key"]),
        }
    )
    assert by_env.invoke(app, ["models", "--json"]).exit_code == 0
    denied = by_env.invoke(app, ["models", "delete", "anything"])
    assert denied.exit_code == 1
    assert denied.stderr == "error: a read token may not call DeleteModel (PERMISSION_DENIED)\n"

    no_token = plain.invoke(app, [*flags[2:], "models"])
    assert no_token.exit_code == 1
    assert no_token.stderr == "error: a bearer token is required (UNAUTHENTICATED)\n"
    missing = plain.invoke(app, ["--tls-ca-file", str(tmp_path / "none.pem"), "models"])
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error: --tls: ca_file: cannot read ")
    assert len(missing.stderr.splitlines()) == 1

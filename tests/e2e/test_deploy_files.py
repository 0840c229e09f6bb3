"""The deployment files, checked without a Docker engine: docker-compose.yml against the Compose
specification (the compose-spec package, a binding of the compose_spec crate's strict parser),
deploy/envoy.yaml against Envoy's v3 API (the xds-protos package: Envoy's own protos, parsed
with unknown fields refused), and the references between them and the Dockerfile."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyOptions
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401  (registers the type)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format
from sqlalchemy.engine import make_url

from pdplanner.service.server import SERVICE_NAME

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as the Compose specification reads it (merge keys applied)."""
    parsed = PyOptions(apply_merge=True).from_yaml((ROOT / "docker-compose.yml").read_text())
    parsed.validate()
    return parsed.to_dict()


@pytest.fixture(scope="module")
def envoy() -> bootstrap_pb2.Bootstrap:
    raw = yaml.safe_load((ROOT / "deploy" / "envoy.yaml").read_text())
    return json_format.ParseDict(raw, bootstrap_pb2.Bootstrap())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage of the Dockerfile, continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    instructions = [tuple(line.split(None, 1)) for line in lines if line and line[0] != "#"]
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return [(word, rest) for word, rest in instructions[last_from:]]


def test_the_compose_file_is_valid_and_every_dependency_is_a_service(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) == {"db", "migrate", "pdplanner", "envoy", "prometheus"}
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_a_compose_file_with_a_misspelled_key_is_refused() -> None:
    text = (ROOT / "docker-compose.yml").read_text().replace("depends_on:", "depends_onn:", 1)
    with pytest.raises(ValueError, match="depends_onn"):
        PyOptions(apply_merge=True).from_yaml(text)


def test_replicas_share_one_postgresql_and_start_after_it_and_the_migrations(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    server = services["pdplanner"]
    assert server["deploy"]["replicas"] >= 2
    assert "ports" not in server  # only Envoy is published; replicas would clash on a host port
    assert server["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert services["migrate"]["entrypoint"] == ["pdplanner", "db", "upgrade"]
    assert services["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    db = services["db"]
    assert "pg_isready" in db["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in db["volumes"])
    for name in ("migrate", "pdplanner"):
        url = make_url(services[name]["environment"]["PDPLANNER_DATABASE_URL"])
        assert (url.host, url.database) == ("db", db["environment"]["POSTGRES_DB"])
        assert url.username == db["environment"]["POSTGRES_USER"]


def test_envoy_config_parses_against_envoys_v3_api(envoy: bootstrap_pb2.Bootstrap) -> None:
    (listener,) = envoy.static_resources.listeners
    (chain,) = listener.filter_chains
    (hcm_filter,) = chain.filters
    hcm = hcm_pb2.HttpConnectionManager()
    assert hcm_filter.typed_config.Unpack(hcm)
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]


def test_an_envoy_config_with_a_misspelled_field_is_refused() -> None:
    raw = yaml.safe_load((ROOT / "deploy" / "envoy.yaml").read_text())
    raw["static_resources"]["clusters"][0]["lb_polcy"] = "ROUND_ROBIN"
    with pytest.raises(json_format.ParseError, match="lb_polcy"):
        json_format.ParseDict(raw, bootstrap_pb2.Bootstrap())


def test_envoy_balances_grpc_calls_over_healthy_replicas(
    envoy: bootstrap_pb2.Bootstrap, compose: dict[str, Any]
) -> None:
    (listener,) = envoy.static_resources.listeners
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    routed = {r.route.cluster for vh in hcm.route_config.virtual_hosts for r in vh.routes}
    (cluster,) = envoy.static_resources.clusters
    assert routed == {cluster.name}
    # Per-call balancing needs HTTP/2 to the replicas, re-resolved DNS and gRPC health checks.
    options = http_protocol_options_pb2.HttpProtocolOptions()
    typed = cluster.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert typed.Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")
    assert cluster.type == cluster.STRICT_DNS
    (health_check,) = cluster.health_checks
    assert health_check.grpc_health_check.service_name == SERVICE_NAME
    # The endpoint is the compose service of the replicas, on the port they serve.
    (endpoint,) = cluster.load_assignment.endpoints[0].lb_endpoints
    address = endpoint.endpoint.address.socket_address
    server = compose["services"]["pdplanner"]
    assert address.address == "pdplanner"
    assert str(address.port_value) == server["environment"]["PDPLANNER_PORT"]
    # Envoy's published port is its listener's, and it mounts this very file.
    envoy_service = compose["services"]["envoy"]
    assert f"50051:{listener.address.socket_address.port_value}" in envoy_service["ports"]
    assert "./deploy/envoy.yaml:/etc/envoy/envoy.yaml:ro" in envoy_service["volumes"]


def test_prometheus_scrapes_every_replica_and_envoy(
    envoy: bootstrap_pb2.Bootstrap, compose: dict[str, Any]
) -> None:
    services = compose["services"]
    server = services["pdplanner"]
    metrics_port = server["environment"]["PDPLANNER_METRICS_PORT"]
    assert metrics_port in {str(port) for port in server["expose"]} and "ports" not in server
    assert metrics_port != server["environment"]["PDPLANNER_PORT"]
    prometheus = services["prometheus"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"pdplanner", "envoy"}
    # each replica on its own: the DNS name that Envoy resolves, at the replicas' metrics port
    (discovery,) = jobs["pdplanner"]["dns_sd_configs"]
    (endpoint,) = envoy.static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints
    assert discovery["names"] == [endpoint.endpoint.address.socket_address.address]
    assert (discovery["type"], str(discovery["port"])) == ("A", metrics_port)
    # Envoy's statistics from its admin port, which the metrics port is not routed through
    admin = envoy.admin.address.socket_address.port_value
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    assert jobs["envoy"]["static_configs"] == [{"targets": [f"envoy:{admin}"]}]
    listener_ports = {
        lst.address.socket_address.port_value for lst in envoy.static_resources.listeners
    }
    assert int(metrics_port) not in listener_ports


def test_the_image_runs_as_a_user_with_a_warm_writable_numba_cache() -> None:
    steps = dockerfile_instructions()
    words = [word for word, _ in steps]
    user = words.index("USER")
    assert [rest for word, rest in steps if word == "USER"] == ["pdplanner"]
    env = " ".join(rest for word, rest in steps if word == "ENV")
    cache = re.search(r"NUMBA_CACHE_DIR=(\S+)", env)
    assert cache is not None
    assert any(
        word == "RUN" and 'chown pdplanner "$NUMBA_CACHE_DIR"' in rest
        for word, rest in steps[:user]
    )
    warm = [
        i for i, (word, rest) in enumerate(steps) if word == "RUN" and "planner.warmup()" in rest
    ]
    assert warm and warm[0] > user  # compiled as the user that runs the server


def test_the_image_entrypoint_and_healthcheck_are_the_tested_scripts() -> None:
    steps = dict(dockerfile_instructions())
    (copy,) = [
        rest for word, rest in dockerfile_instructions() if word == "COPY" and "deploy/" in rest
    ]
    copied = copy.split()
    assert copied[:2] == ["deploy/entrypoint.sh", "deploy/healthcheck.py"]
    for source in copied[:-1]:
        assert (ROOT / source).is_file()
    target = copied[-1]
    assert steps["ENTRYPOINT"] == f'["{target}entrypoint.sh"]'
    assert f'"{target}healthcheck.py"' in steps["HEALTHCHECK"]

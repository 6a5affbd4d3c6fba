"""docker/: what can be checked without a Docker engine, against the real schema and CLI."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml

from corepay.backends import parse_options
from corepay.backends.couchbase import CouchbaseConfig
from corepay.backends.kafka import KafkaBus
from corepay.cli import main
from corepay.settings import ENV_VARS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def _corepay_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("corepay")
    }


def test_compose_file_follows_the_compose_specification(
    compose: dict[str, Any], validator: jsonschema.Draft202012Validator
) -> None:
    validator.validate(compose)
    broken = copy.deepcopy(compose)
    broken["services"]["ingestion"]["ports"] = "8080"  # the validator does reject mistakes
    assert not validator.is_valid(broken)


def test_compose_runs_the_whole_platform(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "couchbase", "couchbase-init"} <= set(services)
    commands = {s["command"][1] for s in _corepay_services(compose).values()}
    assert commands == {"ingestion", "engine", "twin", "detector", "gateway"}
    for name, service in services.items():
        if name != "couchbase-init":
            assert "healthcheck" in service, f"{name} has no healthcheck"
            assert service.get("restart") == "unless-stopped", name
    assert "8080:8080" in services["ingestion"]["ports"]
    # The engine authorizes through the gateway service, and waits for it to be healthy.
    engine = services["engine"]
    assert engine["command"][engine["command"].index("--gateway") + 1] == "http://gateway:8082"
    assert engine["depends_on"]["gateway"]["condition"] == "service_healthy"
    init = services["couchbase-init"]["command"][0]
    for step in ("cluster-init", "bucket-create", "--create-scope", "--create-collection"):
        assert step in init


def _parse_with_the_cli(args: list[str]) -> None:
    """Parse ``corepay ARGS`` as the real command line does, without running it."""
    ctx = click.Context(main, info_name="corepay")
    command = main.get_command(ctx, args[0])
    if command is None:
        raise click.UsageError(f"no corepay command {args[0]}")
    command.make_context(args[0], list(args[1:]), parent=ctx)


def test_every_service_command_is_one_the_cli_accepts(compose: dict[str, Any]) -> None:
    for service in _corepay_services(compose).values():
        _parse_with_the_cli(service["command"])
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.MULTILINE)
    assert cmd is not None
    _parse_with_the_cli(json.loads(cmd.group(1)))
    with pytest.raises(click.UsageError):  # the check does catch a wrong command
        _parse_with_the_cli(["serve", "engnie"])


def test_every_variable_compose_sets_is_one_the_settings_read(compose: dict[str, Any]) -> None:
    for name, service in _corepay_services(compose).items():
        env = service["environment"]
        unknown = set(env) - set(ENV_VARS)
        assert not unknown, f"{name} sets variables CorePay does not read: {unknown}"
        bus_url = env["COREPAY_BUS_URL"]
        assert isinstance(KafkaBus.from_url(bus_url, parse_options(bus_url)), KafkaBus)
        store_url = env["COREPAY_STORE_URL"]
        config = CouchbaseConfig.from_url(store_url, parse_options(store_url))
        assert (config.bucket, config.scope, config.collection) == ("corepay", "risk", "twins")
        init = compose["services"]["couchbase-init"]["command"][0]
        assert f"--bucket {config.bucket}" in init
        assert f"--create-collection {config.scope}.{config.collection}" in init


def test_the_image_runs_as_a_non_root_user_with_corepay_as_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["corepay"\]$', text, re.MULTILINE)
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in shlex.split(line)[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"

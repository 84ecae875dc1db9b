"""What can be checked of deploy/ without a container engine or a cluster: every file
parses and passes its format's linter or schema (hadolint, the Compose specification,
Kubernetes' OpenAPI schemas in strict mode, systemd-analyze), the topology is the one
documented, and every command the files run is a real `vivix` command line."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml
from compose_spec import PyCompose

from vivix.cli import app as vivix_cli

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
IN_CI = os.environ.get("CI", "").lower() == "true"


def parse_vivix(args: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Resolve `vivix ARGS` against the real CLI without running it: the subcommand path
    and its parsed options. Unknown commands or options raise the CLI's usage error."""
    command = typer.main.get_command(vivix_cli)
    ctx = command.make_context("vivix", list(args))
    path: list[str] = []
    rest = [*ctx._protected_args, *ctx.args]
    while hasattr(command, "resolve_command"):
        name, command, rest = command.resolve_command(ctx, rest)
        assert name is not None
        assert command is not None
        path.append(name)
        ctx = command.make_context(name, rest, parent=ctx)
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
    assert not rest, f"unparsed arguments {rest}"
    return path, ctx.params


def test_parse_vivix_refuses_what_the_cli_refuses() -> None:
    assert parse_vivix(["worker", "--metrics-port", "9100"]) == (
        ["worker"],
        {"metrics_port": 9100, "concurrency": None, "as_json": False},
    )
    for bad in (["wrk"], ["worker", "--bogus"], ["serve", "--port", "http"]):
        with pytest.raises(typer.BadParameter.__mro__[1]):  # click's UsageError
            parse_vivix(bad)


# -- Dockerfile ------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_built_with_uv_and_runs_as_non_root() -> None:
    instructions = _dockerfile_instructions()
    stages = [arg for op, arg in instructions if op == "FROM"]
    assert len(stages) >= 2
    final_stage = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    runs = " ".join(arg for op, arg in instructions[:final_stage] if op == "RUN")
    assert "uv sync --frozen --no-dev" in runs  # the lock file decides what ships
    final = instructions[final_stage:]
    assert not any(op == "RUN" and "uv " in arg for op, arg in final)
    users = [arg for op, arg in final if op == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")
    # The copied virtualenv must be the one the build stage made.
    assert any(op == "COPY" and "--from=build" in arg and ".venv" in arg for op, arg in final)


def test_dockerfile_entrypoint_and_cmd_are_a_vivix_command() -> None:
    instructions = dict(_dockerfile_instructions())
    entrypoint = json.loads(instructions["ENTRYPOINT"])
    cmd = json.loads(instructions["CMD"])
    assert entrypoint == ["vivix"]
    assert parse_vivix(cmd)[0] == ["serve"]
    assert parse_vivix(cmd)[1]["no_worker"] is True
    # `vivix` is the console script the project declares, so it is on the venv's PATH.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'vivix = "vivix.cli:main"' in pyproject


# -- Compose -----------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} (and $$ for a literal $)."""

    def value(match: re.Match[str]) -> str:
        name, rest = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if ":?" in match.group(0):
            raise AssertionError(f"compose needs {name}: {rest}")
        return rest or ""

    return _VARIABLE.sub(value, text).replace("$$", "$")


def _env_example() -> dict[str, str]:
    pairs = [
        line.split("=", 1)
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    return {k: v for k, v in pairs}


def _compose() -> dict[str, Any]:
    text = _interpolate((DEPLOY / "compose.yaml").read_text(), _env_example())
    data: dict[str, Any] = yaml.safe_load(text)  # resolves the YAML anchors/merge keys
    return data


def test_compose_file_validates_against_the_compose_specification() -> None:
    compose = _compose()
    parsed = PyCompose.from_json(json.dumps(compose))
    assert set(parsed.service_names()) == set(compose["services"])
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["replica"] = 2  # a typo must not pass
    with pytest.raises(ValueError, match="replica"):
        PyCompose.from_json(json.dumps(broken))


def test_compose_needs_every_secret_and_refuses_to_start_without() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    env = _env_example()
    for name in ("POSTGRES_PASSWORD", "VIVIX_SECRET_KEY", "VIVIX_ADMIN_TOKEN"):
        missing = {k: v for k, v in env.items() if k != name}
        with pytest.raises(AssertionError, match=name):
            _interpolate(text, missing)


def test_compose_topology() -> None:
    services = _compose()["services"]
    api, worker = services["api"], services["worker"]
    assert api["deploy"]["replicas"] == 2
    assert worker["deploy"]["replicas"] == 2
    assert parse_vivix(api["command"])[0] == ["serve"]
    assert parse_vivix(worker["command"])[0] == ["worker"]
    assert parse_vivix(services["migrate"]["command"])[0] == ["migrate"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["VIVIX_DATABASE_URL"].startswith("postgresql://")
        assert env["VIVIX_REDIS_URL"].startswith("redis://redis:")
        assert env["VIVIX_STORAGE_URL"].startswith("s3://")
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert len(env["VIVIX_ADMIN_TOKEN"]) >= 32
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert "postgres" in services["postgres"]["image"]
    assert "redis" in services["redis"]["image"]
    assert "minio" in services["minio"]["image"]
    assert "nginx" in services["proxy"]["image"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "server api:8000" in nginx
    assert "proxy_buffering off" in nginx  # SSE streams


# -- systemd -----------------------------------------------------------------------------


def _unit_exec_start(path: Path) -> list[str]:
    line = next(x for x in path.read_text().splitlines() if x.startswith("ExecStart="))
    words = shlex.split(line.removeprefix("ExecStart="))
    if words[:2] == ["/bin/sh", "-c"]:
        words = shlex.split(words[2].replace("$((9100 + %i))", "9101"))
        words = words[1:] if words[0] == "exec" else words
    assert words[0] == "/opt/vivix/.venv/bin/vivix", words
    return words[1:]


def test_systemd_units_verify_and_run_vivix_commands(tmp_path: Path) -> None:
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert {u.name for u in units} == {
        "vivix-api@.service",
        "vivix-worker@.service",
        "vivix-migrate.service",
    }
    commands = {u.name: parse_vivix(_unit_exec_start(u))[0] for u in units}
    assert commands == {
        "vivix-api@.service": ["serve"],
        "vivix-worker@.service": ["worker"],
        "vivix-migrate.service": ["migrate"],
    }
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if IN_CI:
            pytest.fail("systemd-analyze is part of this machine image; CI must have it")
        pytest.skip("systemd-analyze not installed")
    # Instances of the templates, pointed at this checkout's `vivix` so the executable check
    # of systemd-analyze has something real to find.
    vivix = Path(sys.executable).parent / "vivix"
    for unit in units:
        name = unit.name.replace("@.", "@1.")
        text = unit.read_text().replace("/opt/vivix/.venv/bin/vivix", str(vivix))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", *sorted(str(p.name) for p in tmp_path.iterdir())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys are only warned about


# -- Kubernetes -------------------------------------------------------------------------


def _manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    documents: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        documents += [d for d in yaml.safe_load_all((DEPLOY / "k8s" / resource).read_text()) if d]
    return documents


def test_kubernetes_manifests_validate_strictly() -> None:
    documents = _manifests()
    listed = set(yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    for document in documents:
        kubernetes_validate.validate(document, "1.33", strict=True)
    broken = json.loads(json.dumps(documents[0]))
    broken["metadata"]["nmae"] = "typo"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.33", strict=True)


def _by_kind_and_name(documents: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


def test_kubernetes_topology() -> None:
    resources = _by_kind_and_name(_manifests())
    api = resources[("Deployment", "vivix-api")]["spec"]["template"]["spec"]
    worker = resources[("Deployment", "vivix-worker")]["spec"]["template"]["spec"]
    job = resources[("Job", "vivix-migrate")]["spec"]["template"]["spec"]
    (api_container,) = api["containers"]
    (worker_container,) = worker["containers"]
    (job_container,) = job["containers"]
    assert parse_vivix(api_container["args"])[0] == ["serve"]
    assert parse_vivix(worker_container["args"])[0] == ["worker"]
    assert parse_vivix(job_container["args"])[0] == ["migrate"]
    assert api_container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api_container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = parse_vivix(worker_container["args"])[1]["metrics_port"]
    assert worker_container["ports"][0]["containerPort"] == port
    for spec in (api, worker, job):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
    hpa = resources[("HorizontalPodAutoscaler", "vivix-worker")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "vivix-worker"
    (metric,) = hpa["metrics"]
    assert metric["external"]["metric"]["name"] == "vivix_queue_pending"
    docs = (ROOT / "docs" / "operations.md").read_text()
    assert "vivix_queue_pending" in docs  # the adapter rule that defines it

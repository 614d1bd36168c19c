"""`momo serve` / `momo worker` flags: generated from the settings models by pydantic-settings' CLI
source; flags override the environment, which overrides the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from momo import cli
from service.cli import WorkerSettings, given_flags, settings_or_exit
from service.settings import Settings


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in [n for n in os.environ if n.startswith("MOMO_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_flags_are_the_field_names_with_an_alias_and_negations() -> None:
    args = ["--store", "/s", "--max-batch", "7", "--no-ui-enabled", "--auth-disabled", "--api-keys", "a,b"]
    flags = given_flags(Settings, args, "momo serve")
    assert flags == {
        "model_store": "/s",
        "max_batch": "7",
        "ui_enabled": False,
        "auth_disabled": True,
        "api_keys": "a,b",
    }
    assert given_flags(Settings, ["--model-store", "/t"], "momo serve") == {"model_store": "/t"}
    assert given_flags(Settings, [], "momo serve") == {}  # nothing given: env and defaults decide


def test_flags_override_the_environment_which_overrides_defaults(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MOMO_AUTH_DISABLED", "true")
    clean_env.setenv("MOMO_PORT", "9001")
    clean_env.setenv("MOMO_MAX_BATCH", "3")
    settings = settings_or_exit(Settings, given_flags(Settings, ["--port", "9002"], "momo serve"))
    assert (settings.port, settings.max_batch, settings.max_wait_ms) == (
        9002,
        3,
        Settings.model_fields["max_wait_ms"].default,
    )
    keys = settings_or_exit(Settings, given_flags(Settings, ["--api-keys", "k1,k2"], "momo serve"))
    assert [k.get_secret_value() for k in keys.api_keys] == ["k1", "k2"]


def test_worker_flags_include_the_log_level(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MOMO_LOG_LEVEL", "WARNING")
    from_env = settings_or_exit(WorkerSettings, given_flags(WorkerSettings, ["--store", "/m"], "momo worker"))
    assert (from_env.log_level, from_env.model_store) == ("WARNING", Path("/m"))
    flags = given_flags(WorkerSettings, ["--log-level", "debug", "--job-concurrency", "2"], "momo worker")
    settings = settings_or_exit(WorkerSettings, flags)
    assert (settings.log_level, settings.job_concurrency) == ("debug", 2)


def test_invalid_values_are_one_line_each_and_exit_2(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MOMO_AUTH_DISABLED", "true")
    cli._register_providers(["serve"])
    result = CliRunner().invoke(cli.app, ["serve", "--port", "70000", "--runtime", "bogus"])
    assert result.exit_code == 2, result.output
    assert "error: port: Input should be less than or equal to 65535" in result.output
    assert "error: runtime: Input should be 'onnx'" in result.output
    assert "Traceback" not in result.output
    unknown = CliRunner().invoke(cli.app, ["serve", "--no-such-flag"])
    assert unknown.exit_code == 2 and "--no-such-flag" in unknown.output


def test_worker_help_lists_its_settings() -> None:
    cli._register_providers(["worker"])
    result = CliRunner().invoke(cli.app, ["worker", "--help"])
    assert result.exit_code == 0, result.output
    for flag in ("--log-level", "--broker-url", "--job-concurrency", "--store", "--job-export-onnx"):
        assert flag in result.output
    assert "--no-job-export-onnx" in result.output and "--max-batch" not in result.output

"""What the Makefile's run/web targets would execute (``make -n``: nothing runs)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from harness import ROOT, proxy_env

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def dry_run(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["make", "-n", *args, "PYTHON=python3"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=proxy_env(env),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_web_port_is_a_variable_defaulting_to_8081():
    assert "mitmweb --set web_port=8081 " in dry_run("web")
    assert "mitmweb --set web_port=9123 " in dry_run("web", "WEB_PORT=9123")


def test_proxy_auth_from_a_file_or_the_environment_never_reaches_the_command_line(tmp_path):
    secret_file = tmp_path / "proxyauth"
    secret_file.write_text("alice:pw-in-file-4417\n")
    command = dry_run("run", f"PROXYAUTH_FILE={secret_file}")
    assert f"--set memory_routing_proxyauth_file={secret_file}" in command
    assert "pw-in-file-4417" not in command
    assert "pw-in-env-4418" not in dry_run("run", env={"MEMORY_ROUTING_PROXYAUTH": "alice:pw-in-env-4418"})

"""docs/deploy.md's Kubernetes example is real: its config, options, variables and probes.

The page's YAML blocks are parsed as they are. The ConfigMap's config.yaml loads with the
Secret's values as the environment; the container's command line is parsed by mitmdump's own
argument parser, and every `--set` names an option mitmproxy or our addons register; every
variable the pod sets is read by the config or the code; the probes call a real endpoint on the
gateway's port. The end-to-end test runs that command and that probe against real PostgreSQL and
Redis servers (tests/fleet_servers.py).
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from mitmproxy.addons import default_addons, dumper, errorcheck, keepserving, readfile
from mitmproxy.certs import CertStore
from mitmproxy.options import CONF_BASENAME
from mitmproxy.proxy.mode_specs import ProxyMode, RegularMode, ReverseMode
from mitmproxy.test import taddons
from mitmproxy.tools import cmdline

from harness import ADDON, MITMDUMP, ROOT, START_TIMEOUT_SECONDS, RunningProxy, free_port, proxy_env, wait_until
from memory_routing.addons import create_addons
from memory_routing.addons.local_endpoints import HEALTH_PATH, INFO_PATH
from memory_routing.addons.proxyauth_secret import ENV_VAR as PROXYAUTH_ENV
from memory_routing.config.schema import parse_config

PAGE = ROOT / "docs" / "deploy.md"
IMAGE_APP = "/app"
PROBE_TIMEOUT_S = 10.0


def yaml_documents() -> list[dict[str, Any]]:
    """Every YAML document of the page's ```yaml blocks, in order."""
    blocks = re.findall(r"^```yaml\n(.*?)^```$", PAGE.read_text(), flags=re.S | re.M)
    return [doc for block in blocks for doc in yaml.safe_load_all(block) if doc is not None]


DOCS = yaml_documents()


def kind(name: str) -> dict[str, Any]:
    found = [doc for doc in DOCS if doc.get("kind") == name]
    assert len(found) == 1, f"docs/deploy.md has {len(found)} {name} documents"
    return found[0]


def container() -> dict[str, Any]:
    containers = kind("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def secret_env() -> dict[str, str]:
    """The variables the pod gets from the Secret its container names in envFrom."""
    secret = kind("Secret")
    names = [source["secretRef"]["name"] for source in container().get("envFrom", [])]
    assert names == [secret["metadata"]["name"]]
    return dict(secret["stringData"])


def pod_env() -> dict[str, str]:
    """Every variable the container sets, with the value it has in a pod named memory-routing-7f9c-x2."""
    env = secret_env()
    for entry in container().get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            assert entry["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, entry
            env[entry["name"]] = "memory-routing-7f9c-x2"
    return env


def config_text() -> str:
    text: str = kind("ConfigMap")["data"]["config.yaml"]
    return text


def command() -> list[str]:
    return [str(part) for part in container()["command"]]


def option_value(name: str) -> str:
    values = [item.split("=", 1)[1] for item in parsed_command().setoptions if item.split("=", 1)[0] == name]
    assert len(values) == 1, f"--set {name}=... appears {len(values)} times"
    return values[0]


def mitmdump_parser_and_options() -> tuple[Any, set[str]]:
    """mitmdump's own argument parser over every option mitmproxy and our addons register."""
    addons = [*default_addons(), dumper.Dumper(), keepserving.KeepServing(), readfile.ReadFileStdin(),
              errorcheck.ErrorCheck(), *create_addons()]
    with taddons.context(*addons, loadcore=False) as tctx:
        return cmdline.mitmdump(tctx.options), set(tctx.options.keys())


PARSER, OPTIONS = mitmdump_parser_and_options()


def parsed_command() -> Any:
    assert command()[0] == f"{IMAGE_APP}/.venv/bin/mitmdump"
    return PARSER.parse_args(command()[1:])


def modes() -> list[ProxyMode]:
    return [ProxyMode.parse(spec) for spec in parsed_command().mode]


def gateway_port() -> int:
    (gateway,) = [mode for mode in modes() if isinstance(mode, ReverseMode)]
    port = gateway.listen_port()
    assert port is not None
    return port


def probe_commands() -> list[list[str]]:
    return [[str(part) for part in container()[probe]["exec"]["command"]] for probe in ("readinessProbe", "livenessProbe")]


def test_the_page_has_the_kubernetes_objects():
    assert {doc.get("kind") for doc in DOCS} >= {"ConfigMap", "Secret", "Deployment", "Service"}
    assert kind("Deployment")["spec"]["replicas"] == 3


def test_the_configmap_config_loads_with_the_pods_environment():
    config = parse_config(config_text(), "docs/deploy.md ConfigMap config.yaml", pod_env())
    assert config.warnings == ()  # a variable it names and the pod does not set would warn
    assert config.storage.uses_database and config.storage.uses_redis
    assert config.storage.database_url is not None and config.storage.database_url.env_var == "DATABASE_URL"
    # The page's first block, the storage section alone, is the one the ConfigMap uses.
    assert DOCS[0] == {"storage": yaml.safe_load(config_text())["storage"]}


def test_every_option_of_the_command_is_registered():
    args = parsed_command()
    assert args.setoptions, "the command sets no option: the walk below would check nothing"
    for item in args.setoptions:
        name = item.split("=", 1)[0]
        assert name in OPTIONS, f"--set {item}: mitmdump has no option {name!r}"
    assert args.scripts == [f"{IMAGE_APP}/addon.py"]
    assert {type(mode) for mode in modes()} == {RegularMode, ReverseMode}
    # Listening beyond loopback is refused without proxy authentication: the pod has it.
    assert args.listen_host == "0.0.0.0" and pod_env()[PROXYAUTH_ENV]
    assert Path(option_value("memory_routing_config")).parent.as_posix() in {
        mount["mountPath"] for mount in container()["volumeMounts"] if mount["name"] == "config"}


def test_every_variable_the_pod_sets_is_read():
    config_vars = set(re.findall(r"os\.environ/([A-Za-z_][A-Za-z0-9_]*)", config_text()))
    assert config_vars <= set(pod_env()), "the config names a variable the pod does not set"
    code = "\n".join(path.read_text() for path in (ROOT / "memory_routing").rglob("*.py"))
    for name in pod_env():
        read_by_code = f'"{name}"' in code
        assert name in config_vars or read_by_code, f"{name} is set in the pod but read by neither the config nor the code"


def test_the_mitmproxy_ca_is_mounted_where_mitmproxy_reads_it():
    mounts = {mount["name"]: mount for mount in container()["volumeMounts"]}
    ca_file = f"{CONF_BASENAME}-ca.pem"
    assert mounts["ca"]["mountPath"] == f"{option_value('confdir')}/{ca_file}"
    assert mounts["ca"]["subPath"] == ca_file
    assert mounts["confdir"]["mountPath"] == option_value("confdir")
    volumes = {volume["name"]: volume for volume in kind("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert "secret" in volumes["ca"] and "emptyDir" in volumes["confdir"]  # confdir is written to


def test_the_probes_call_health_on_the_gateway():
    for probe in probe_commands():
        assert probe[:2] == [f"{IMAGE_APP}/.venv/bin/python", "-c"]
        (url,) = re.findall(r"http://[^\"']+", probe[2])
        assert urlsplit(url).path == HEALTH_PATH
        assert urlsplit(url).port == gateway_port()
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    assert sorted(ports.values()) == sorted(mode.listen_port() for mode in modes())
    service = kind("Service")["spec"]
    assert {port["targetPort"] for port in service["ports"]} <= set(ports)
    assert service["selector"] == kind("Deployment")["spec"]["selector"]["matchLabels"]


# --- the container's command and its probe, run ---------------------------------------------------


def local(parts: list[str], replacements: dict[str, str]) -> list[str]:
    """The pod's command with the image's paths and ports made this machine's."""
    result = []
    for part in parts:
        for old, new in replacements.items():
            part = part.replace(old, new)
        result.append(part)
    return result


def probe_passes(probe: list[str], env: dict[str, str]) -> bool:
    try:
        return subprocess.run(probe, env=proxy_env(env), capture_output=True, timeout=PROBE_TIMEOUT_S).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture
def documented_pod(tmp_path: Path, database_url: str, redis_url: str
                   ) -> Iterator[tuple[dict[str, str], dict[str, str], Path, Path]]:
    """The documented container run here: its command, config, environment and CA file.
    Yields (the replacements that make the pod's paths and ports this machine's, its environment,
    its log, its CA file)."""
    config_dir, confdir = tmp_path / "etc", tmp_path / "confdir"
    config_dir.mkdir()
    (config_dir / "config.yaml").write_text(config_text())
    # The CA made once elsewhere; the pod gets only its key-and-certificate file.
    CertStore.create_store(tmp_path / "ca", CONF_BASENAME, 2048)
    confdir.mkdir()
    ca_file = confdir / f"{CONF_BASENAME}-ca.pem"
    shutil.copyfile(tmp_path / "ca" / ca_file.name, ca_file)
    forward, gateway = free_port(), free_port()
    replacements = {
        f"{IMAGE_APP}/.venv/bin/mitmdump": str(MITMDUMP), f"{IMAGE_APP}/.venv/bin/python": sys.executable,
        f"{IMAGE_APP}/addon.py": str(ADDON), option_value("confdir"): str(confdir),
        Path(option_value("memory_routing_config")).parent.as_posix(): str(config_dir),
        f"@{gateway_port()}": f"@{gateway}", f":{gateway_port()}/": f":{gateway}/",
        f"regular@{next(m.listen_port() for m in modes() if isinstance(m, RegularMode))}": f"regular@{forward}",
    }
    env = {**pod_env(), "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    log = tmp_path / "mitmdump.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(local(command(), replacements), env=proxy_env(env), cwd=tmp_path,
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield replacements, env, log, ca_file
    finally:
        RunningProxy(process, forward, gateway, confdir, log).stop()


@pytest.mark.e2e
def test_the_documented_container_starts_and_its_probes_pass(documented_pod):
    replacements, env, log, ca_file = documented_pod
    readiness, liveness = (local(probe, replacements) for probe in probe_commands())
    assert wait_until(lambda: probe_passes(readiness, env), START_TIMEOUT_SECONDS), log.read_text(errors="replace")
    assert probe_passes(liveness, env)
    assert not probe_passes(readiness, {**env, PROXYAUTH_ENV: "team:wrong-password"})

    gateway = next(value for key, value in replacements.items() if key.startswith("@")).lstrip("@")
    auth = "Basic " + base64.b64encode(env[PROXYAUTH_ENV].encode()).decode()
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway}", timeout=30, trust_env=False) as client:
        assert wait_until(lambda: client.get(INFO_PATH, headers={"proxy-authorization": auth}).json()
                          ["fleet"]["database"]["ready"], 60)
        fleet = client.get(INFO_PATH, headers={"proxy-authorization": auth}).json()["fleet"]
        assert fleet["proxy"] == "memory-routing-7f9c-x2"  # the pod's name, from the downward API
        assert client.get(HEALTH_PATH).status_code == 401  # hence the probe's credential
    # The replica uses the CA it was given, and makes none of its own.
    assert ca_file.read_bytes() == (ca_file.parent.parent / "ca" / ca_file.name).read_bytes()
    for secret in ("change-me", env["OPENAI_API_KEY"]):
        assert secret not in log.read_text(errors="replace")

"""Parse a LiteLLM-style ``config.yaml`` into typed, frozen objects.

Pure logic: no mitmproxy imports, so the parser is usable (and testable) on its own.
Every error names the file and the key path, e.g.
``config.yaml: user_id_mappings.header_patterns[1].pattern: invalid regex: ...``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from memory_routing.errors import ConfigError  # noqa: F401 (raised here; importable from here)
from memory_routing.wire.header_values import CONTROL_IN_VALUE, USER_ID_RULE, is_user_id

ENV_PREFIX = "os.environ/"
DEFAULT_CUSTOM_HEADER = "x-memory-user-id"
DEFAULT_USER_ID = "default-dev"
DEFAULT_SUPERMEMORY_BASE_URL = "https://api.supermemory.ai/v3"
TRANSLATE_MODES = ("auto", "always", "never")
MEMORY_BACKENDS = ("local", "supermemory", "off")
# What a call does with memory: "both" reads (recall) and writes (stores the turn).
MEMORY_MODES = ("off", "read", "write", "both")
DEFAULT_MEMORY_BUDGET_TOKENS = 1000
DEFAULT_MEMORY_DEADLINE_MS = 50
# All recall blocks of one conversation together (each is re-sent with every later request).
DEFAULT_MEMORY_CONVERSATION_BUDGET_TOKENS = 4000

# RFC 9110 token characters: anything else cannot be a header name.
HEADER_NAME_PATTERN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# Sections of a LiteLLM proxy config that this addon accepts but does not act on, so that a
# config written for the LiteLLM proxy (or the older FastAPI design) loads unchanged.
_IGNORED_TOP_LEVEL_KEYS = frozenset(
    {"litellm_settings", "router_settings", "environment_variables", "litellm_backend_url"}
)
_KNOWN_TOP_LEVEL_KEYS = frozenset(
    {"model_list", "general_settings", "user_id_mappings", "memory"}
) | _IGNORED_TOP_LEVEL_KEYS


@dataclass(frozen=True)
class Secret:
    """A credential from the config: printable only as where it came from, never its value."""

    value: str | None = field(repr=False)
    env_var: str | None = None

    @property
    def is_set(self) -> bool:
        return bool(self.value)

    def describe(self) -> str:
        if self.env_var is None:
            return "set inline in the config"
        state = "set" if self.is_set else "unset"
        return f"{ENV_PREFIX}{self.env_var} ({state})"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class ModelAlias:
    """One ``model_list`` entry: the alias clients ask for and its ``litellm_params``."""

    model_name: str
    model: str
    api_base: str | None
    api_key: Secret | None
    custom_llm_provider: str | None
    extra_headers: tuple[tuple[str, Secret], ...]
    # Every other litellm_params key, env references resolved, kept for LiteLLM itself.
    other_params: Mapping[str, Any]
    # Environment variables this entry references that are unset: requests for the alias
    # are answered with an error naming them rather than sent half-configured.
    unset_env_vars: tuple[str, ...]
    # Entry-level `memory: false` keeps this alias out of Supermemory even when memory is on.
    memory: bool = True
    # Entry-level `translate`: "auto" translates only when the provider has no endpoint in the
    # client's format, "always" uses the provider's native API, "never" refuses to translate.
    translate: str = "auto"

    @property
    def drop_params(self) -> bool:
        """LiteLLM's drop_params: leave out request parameters the provider does not take. On
        unless the entry sets it false: translated clients (Claude Code) send parameters no
        other provider has."""
        return self.other_params.get("drop_params") is not False

    @property
    def provider_hint(self) -> str | None:
        """The provider the entry names itself, without asking LiteLLM."""
        if self.custom_llm_provider:
            return self.custom_llm_provider
        prefix, sep, _ = self.model.partition("/")
        return prefix if sep else None


@dataclass(frozen=True)
class HeaderPattern:
    """One classification rule: a regex searched in one request header."""

    index: int
    header: str  # lower-cased
    pattern: str
    user_id: str
    regex: re.Pattern[str] = field(compare=False, repr=False)

    @property
    def rule_name(self) -> str:
        return f"user_id_mappings.header_patterns[{self.index}]"

    def as_dict(self) -> dict[str, str]:
        return {"header": self.header, "pattern": self.pattern, "user_id": self.user_id}


@dataclass(frozen=True)
class UserIdMappings:
    custom_header: str
    header_patterns: tuple[HeaderPattern, ...]
    default_user_id: str


@dataclass(frozen=True)
class MemoryClientRule:
    """``memory.clients[i]``: a client's default memory mode, by its memory user id or a header
    pattern (searched like ``user_id_mappings.header_patterns``)."""

    index: int
    mode: str  # one of MEMORY_MODES
    user_id: str | None = None
    header: str | None = None  # lower-cased; set together with regex
    pattern: str | None = None
    regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @property
    def rule_name(self) -> str:
        return f"memory.clients[{self.index}]"


@dataclass(frozen=True)
class MemorySettings:
    """Which memory a call gets: ``backend`` is resolved at load time ("local", "supermemory", "off").

    Supermemory: ``enabled`` None means on exactly when the API key resolves.
    """

    enabled: bool | None
    api_key: Secret | None
    base_url: str
    backend: str = "local"
    backend_configured: bool = False  # False: the default (Supermemory when its key resolves, else local)
    budget_tokens: int = DEFAULT_MEMORY_BUDGET_TOKENS
    deadline_ms: float = DEFAULT_MEMORY_DEADLINE_MS
    clients: tuple[MemoryClientRule, ...] = ()
    retention_days: float | None = None  # None: memories are kept until deleted
    conversation_budget_tokens: int = DEFAULT_MEMORY_CONVERSATION_BUDGET_TOKENS

    @property
    def active(self) -> bool:
        """Supermemory's router is used."""
        key_set = self.api_key is not None and self.api_key.is_set
        return self.backend == "supermemory" and key_set and self.enabled is not False

    @property
    def local(self) -> bool:
        """The embedded memory is used."""
        return self.backend == "local"


@dataclass(frozen=True)
class GeneralSettings:
    master_key: Secret | None
    other: Mapping[str, Any]


@dataclass(frozen=True)
class ProxyConfig:
    source: str
    models: tuple[ModelAlias, ...]
    general: GeneralSettings
    user_id_mappings: UserIdMappings
    memory: MemorySettings
    # Things worth telling the user at load time that do not stop the config from working.
    warnings: tuple[str, ...]
    _models_by_name: Mapping[str, ModelAlias] = field(repr=False, compare=False)

    def model(self, name: str) -> ModelAlias | None:
        return self._models_by_name.get(name)

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self._models_by_name)


class _Context:
    """Carries the file name, the environment and collected warnings through the parse."""

    def __init__(self, source: str, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{self.source}: {path}: {message}")


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> ProxyConfig:
    """Read and parse the config file at ``path``; raises ConfigError naming file and key."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8 text: {e.reason} at byte {e.start}") from e
    config = parse_config(text, source, os.environ if environ is None else environ)
    if not config.models:
        # An empty file parses as valid YAML: without this, truncating the config while the
        # proxy runs would silently drop every alias.
        state = "is empty" if not text.strip() else "has no models"
        raise ConfigError(
            f"{source}: model_list: the config {state}; a proxy config needs at least one "
            "model_list entry (model_name and litellm_params.model)"
        )
    return config


def parse_config(text: str, source: str, environ: Mapping[str, str]) -> ProxyConfig:
    ctx = _Context(source, environ)
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{source}: {where}invalid YAML: {e.problem or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from e
    if raw is None:
        raw = {}
    top = _mapping(ctx, raw, "")

    for key in top:
        if key not in _KNOWN_TOP_LEVEL_KEYS:
            ctx.warn(str(key), "unknown section, ignored")
    if "litellm_backend_url" in top:
        ctx.warn("litellm_backend_url", "ignored: the addon resolves providers itself through LiteLLM")

    models = _parse_model_list(ctx, top.get("model_list"))
    models_by_name: dict[str, ModelAlias] = {}
    for index, alias in enumerate(models):
        if alias.model_name in models_by_name:
            ctx.warn(
                f"model_list[{index}].model_name",
                f"duplicate alias {alias.model_name!r}: the first entry is used",
            )
            continue
        models_by_name[alias.model_name] = alias

    return ProxyConfig(
        source=source,
        models=models,
        general=_parse_general_settings(ctx, top.get("general_settings")),
        user_id_mappings=_parse_user_id_mappings(ctx, top.get("user_id_mappings")),
        memory=_parse_memory(ctx, top.get("memory")),
        warnings=tuple(ctx.warnings),
        _models_by_name=MappingProxyType(models_by_name),
    )


# --- environment references ------------------------------------------------------------


@dataclass(frozen=True)
class _Resolved:
    value: Any
    unset_env_vars: tuple[str, ...]


def _resolve_env(ctx: _Context, value: Any, path: str) -> _Resolved:
    """Replace ``os.environ/VAR`` strings at every depth, as the LiteLLM proxy does."""
    unset: list[str] = []

    def walk(node: Any, node_path: str) -> Any:
        if isinstance(node, str):
            var = _env_var_name(ctx, node, node_path)
            if var is None:
                return node
            resolved = ctx.environ.get(var)
            if not resolved:
                unset.append(var)
                ctx.warn(node_path, f"environment variable {var} is not set")
            return resolved or None
        if isinstance(node, Mapping):
            return {k: walk(v, f"{node_path}.{k}") for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{node_path}[{i}]") for i, v in enumerate(node)]
        return node

    return _Resolved(walk(value, path), tuple(dict.fromkeys(unset)))


def _env_var_name(ctx: _Context, text: str, path: str) -> str | None:
    if not text.startswith(ENV_PREFIX):
        return None
    var = text[len(ENV_PREFIX):]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
        raise ctx.error(path, f"{text!r} does not name a valid environment variable")
    return var


def _secret(ctx: _Context, raw: Any, path: str, unset_consequence: str = "") -> Secret | None:
    """A credential field: an inline string or an ``os.environ/VAR`` reference."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ctx.error(path, f"must be a string, got {_type_name(raw)}")
    var = _env_var_name(ctx, raw, path)
    if var is None:
        value = raw
    else:
        value = ctx.environ.get(var) or None
        if value is None:
            ctx.warn(path, f"environment variable {var} is not set{unset_consequence}")
    if value is not None and CONTROL_IN_VALUE.search(value):
        # The value is sent in a header; say which key is wrong without echoing the secret.
        raise ctx.error(path, "contains a line break or NUL, which cannot be sent in a header")
    return Secret(value=value, env_var=var)


# --- sections ---------------------------------------------------------------------------


def _parse_model_list(ctx: _Context, raw: Any) -> tuple[ModelAlias, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ctx.error("model_list", f"must be a list, got {_type_name(raw)}")
    return tuple(_parse_model(ctx, entry, f"model_list[{i}]") for i, entry in enumerate(raw))


def _parse_model(ctx: _Context, raw: Any, path: str) -> ModelAlias:
    entry = _mapping(ctx, raw, path)
    model_name = _required_str(ctx, entry, "model_name", path)
    params = _mapping(ctx, entry.get("litellm_params"), f"{path}.litellm_params", required=True)
    params_path = f"{path}.litellm_params"

    memory = entry.get("memory", True)
    if not isinstance(memory, bool):
        raise ctx.error(f"{path}.memory", f"must be true or false, got {memory!r}")
    translate = entry.get("translate", "auto")
    if translate not in TRANSLATE_MODES:
        raise ctx.error(f"{path}.translate", f"must be one of {', '.join(TRANSLATE_MODES)}, got {translate!r}")
    api_key = _secret(ctx, params.get("api_key"), f"{params_path}.api_key")
    extra_headers = _parse_extra_headers(ctx, params.get("extra_headers"), f"{params_path}.extra_headers")

    special = {"api_key", "extra_headers"}
    rest = _resolve_env(
        ctx, {k: v for k, v in params.items() if k not in special}, params_path
    )
    resolved: dict[str, Any] = rest.value
    model = resolved.get("model")
    model_from_unset_env = model is None and isinstance(params.get("model"), str) and bool(rest.unset_env_vars)
    if model_from_unset_env:
        model = ""  # the unset variable is already reported; the alias answers with an error
    elif not isinstance(model, str) or not model:
        raise ctx.error(f"{params_path}.model", "required: the provider model, e.g. anthropic/claude-sonnet-4-5")
    api_base = _optional_url(ctx, resolved.get("api_base"), f"{params_path}.api_base")
    provider = resolved.get("custom_llm_provider")
    if provider is not None and not isinstance(provider, str):
        raise ctx.error(f"{params_path}.custom_llm_provider", f"must be a string, got {_type_name(provider)}")

    unset = list(rest.unset_env_vars)
    for secret in [api_key, *(value for _, value in extra_headers)]:
        if secret is not None and secret.env_var and not secret.is_set:
            unset.append(secret.env_var)

    other = {k: v for k, v in resolved.items() if k not in {"model", "api_base", "custom_llm_provider"}}
    return ModelAlias(
        model_name=model_name,
        model=model,
        api_base=api_base,
        api_key=api_key,
        custom_llm_provider=provider,
        extra_headers=extra_headers,
        other_params=MappingProxyType(other),
        unset_env_vars=tuple(dict.fromkeys(unset)),
        memory=memory,
        translate=translate,
    )


def _parse_extra_headers(ctx: _Context, raw: Any, path: str) -> tuple[tuple[str, Secret], ...]:
    if raw is None:
        return ()
    headers = _mapping(ctx, raw, path)
    parsed: list[tuple[str, Secret]] = []
    for name, value in headers.items():
        item_path = f"{path}.{name}"
        if not isinstance(name, str) or not HEADER_NAME_PATTERN.fullmatch(name):
            raise ctx.error(item_path, "not a valid HTTP header name")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        secret = _secret(ctx, value, item_path)
        if secret is None:
            raise ctx.error(item_path, "header value is empty")
        parsed.append((name, secret))
    return tuple(parsed)


def _parse_general_settings(ctx: _Context, raw: Any) -> GeneralSettings:
    settings = _mapping(ctx, raw, "general_settings") if raw is not None else {}
    master_key = _secret(ctx, settings.get("master_key"), "general_settings.master_key")
    if master_key is not None:
        # LiteLLM's proxy checks it on every call; this proxy does not, and must not look as if it did.
        ctx.warn(
            "general_settings.master_key",
            "not enforced by this proxy (it is not LiteLLM's proxy server); to require credentials on "
            "the gateway use mitmproxy's proxyauth option (see README, 'Security')",
        )
    rest = _resolve_env(
        ctx, {k: v for k, v in settings.items() if k != "master_key"}, "general_settings"
    )
    return GeneralSettings(master_key=master_key, other=MappingProxyType(rest.value))


def _parse_user_id_mappings(ctx: _Context, raw: Any) -> UserIdMappings:
    path = "user_id_mappings"
    mappings = _mapping(ctx, raw, path) if raw is not None else {}
    _reject_unknown_keys(ctx, mappings, path, {"custom_header", "header_patterns", "default_user_id"})

    custom_header = mappings.get("custom_header", DEFAULT_CUSTOM_HEADER)
    if not isinstance(custom_header, str) or not HEADER_NAME_PATTERN.fullmatch(custom_header):
        raise ctx.error(f"{path}.custom_header", f"not a valid HTTP header name: {custom_header!r}")

    default_user_id = _user_id(ctx, mappings.get("default_user_id", DEFAULT_USER_ID), f"{path}.default_user_id")

    raw_patterns = mappings.get("header_patterns") or []
    if not isinstance(raw_patterns, list):
        raise ctx.error(f"{path}.header_patterns", f"must be a list, got {_type_name(raw_patterns)}")
    patterns = tuple(
        _parse_header_pattern(ctx, item, index, f"{path}.header_patterns[{index}]")
        for index, item in enumerate(raw_patterns)
    )
    return UserIdMappings(
        custom_header=custom_header.lower(),
        header_patterns=patterns,
        default_user_id=default_user_id,
    )


def _parse_header_pattern(ctx: _Context, raw: Any, index: int, path: str) -> HeaderPattern:
    item = _mapping(ctx, raw, path)
    _reject_unknown_keys(ctx, item, path, {"header", "pattern", "user_id"})
    header, pattern, regex = _header_pattern(ctx, item, path)
    user_id = _user_id(ctx, item.get("user_id"), f"{path}.user_id")
    return HeaderPattern(index=index, header=header, pattern=pattern, user_id=user_id, regex=regex)


def _header_pattern(ctx: _Context, item: Mapping[str, Any], path: str) -> tuple[str, str, re.Pattern[str]]:
    """``header`` (default user-agent, lower-cased), ``pattern`` and its compiled regex."""
    header = item.get("header", "user-agent")
    if not isinstance(header, str) or not HEADER_NAME_PATTERN.fullmatch(header):
        raise ctx.error(f"{path}.header", f"not a valid HTTP header name: {header!r}")
    pattern = _required_str(ctx, item, "pattern", path)
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ctx.error(f"{path}.pattern", f"invalid regex: {e}") from e
    return header.lower(), pattern, regex


def _parse_memory(ctx: _Context, raw: Any) -> MemorySettings:
    path = "memory"
    section = _mapping(ctx, raw, path) if raw is not None else {}
    _reject_unknown_keys(ctx, section, path, {"enabled", "api_key", "base_url", "backend", "budget_tokens",
                                              "deadline_ms", "clients", "retention_days",
                                              "conversation_budget_tokens"})
    enabled = section.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise ctx.error(f"{path}.enabled", f"must be true or false, got {enabled!r}")
    backend = section.get("backend")
    if backend is not None and backend not in MEMORY_BACKENDS:
        raise ctx.error(f"{path}.backend", f"must be one of {', '.join(MEMORY_BACKENDS)}, got {backend!r}")
    wants_supermemory = backend is None and enabled is not False
    consequence = (": memory (Supermemory) is off" if backend == "supermemory"
                   else ": the local memory is used" if wants_supermemory else "")
    api_key = _secret(ctx, section.get("api_key"), f"{path}.api_key", consequence)
    base_url = _optional_url(
        ctx, _resolve_env(ctx, section.get("base_url"), f"{path}.base_url").value, f"{path}.base_url"
    )
    key_set = api_key is not None and api_key.is_set
    if backend is None:
        # Today's behaviour with a Supermemory key; otherwise memory is still on, embedded.
        resolved = "off" if enabled is False else "supermemory" if key_set else "local"
        if enabled and not key_set:
            ctx.warn(f"{path}.enabled", "memory is enabled but memory.api_key is not set: using the local memory")
    else:
        resolved = backend
        if backend == "supermemory" and enabled is False:
            ctx.warn(f"{path}.enabled", "false turns Supermemory off: memory is off")
    budget = section.get("budget_tokens", DEFAULT_MEMORY_BUDGET_TOKENS)
    if not isinstance(budget, int) or isinstance(budget, bool) or not 50 <= budget <= 100_000:
        raise ctx.error(f"{path}.budget_tokens", f"must be a whole number from 50 to 100000, got {budget!r}")
    conversation_budget = section.get("conversation_budget_tokens", DEFAULT_MEMORY_CONVERSATION_BUDGET_TOKENS)
    if (not isinstance(conversation_budget, int) or isinstance(conversation_budget, bool)
            or not 0 <= conversation_budget <= 1_000_000):
        raise ctx.error(f"{path}.conversation_budget_tokens",
                        f"must be a whole number from 0 to 1000000, got {conversation_budget!r}")
    deadline = section.get("deadline_ms", DEFAULT_MEMORY_DEADLINE_MS)
    if not isinstance(deadline, (int, float)) or isinstance(deadline, bool) or not 1 <= deadline <= 10_000:
        raise ctx.error(f"{path}.deadline_ms", f"must be a number of milliseconds from 1 to 10000, got {deadline!r}")
    retention = section.get("retention_days")
    if retention is not None and (not isinstance(retention, (int, float)) or isinstance(retention, bool)
                                  or not 1 <= retention <= 36_500):
        raise ctx.error(f"{path}.retention_days",
                        f"must be a number of days from 1 to 36500 (or null: keep memories until deleted), got {retention!r}")
    raw_clients = section.get("clients") or []
    if not isinstance(raw_clients, list):
        raise ctx.error(f"{path}.clients", f"must be a list, got {_type_name(raw_clients)}")
    clients = tuple(
        _parse_memory_client(ctx, item, index, f"{path}.clients[{index}]") for index, item in enumerate(raw_clients)
    )
    if clients and resolved != "local":
        ctx.warn(f"{path}.clients", f"only the local memory reads these; the backend is {resolved}")
    return MemorySettings(
        enabled=enabled, api_key=api_key, base_url=(base_url or DEFAULT_SUPERMEMORY_BASE_URL).rstrip("/"),
        backend=resolved, backend_configured=backend is not None, budget_tokens=budget,
        deadline_ms=float(deadline), clients=clients,
        retention_days=float(retention) if retention is not None else None,
        conversation_budget_tokens=conversation_budget,
    )


def _parse_memory_client(ctx: _Context, raw: Any, index: int, path: str) -> MemoryClientRule:
    item = _mapping(ctx, raw, path)
    _reject_unknown_keys(ctx, item, path, {"user_id", "header", "pattern", "mode"})
    mode = item.get("mode")
    if mode not in MEMORY_MODES:
        raise ctx.error(f"{path}.mode", f"must be one of {', '.join(MEMORY_MODES)}, got {mode!r}")
    if ("user_id" in item) == ("pattern" in item):
        raise ctx.error(path, "give either user_id (a memory user id) or pattern (with header, default user-agent)")
    if "user_id" in item:
        if "header" in item:
            raise ctx.error(f"{path}.header", "goes with pattern, not with user_id")
        return MemoryClientRule(index=index, mode=mode, user_id=_user_id(ctx, item["user_id"], f"{path}.user_id"))
    header, pattern, regex = _header_pattern(ctx, item, path)
    return MemoryClientRule(index=index, mode=mode, header=header, pattern=pattern, regex=regex)


# --- small validators -------------------------------------------------------------------


def _mapping(ctx: _Context, raw: Any, path: str, required: bool = False) -> dict[str, Any]:
    if raw is None and required:
        raise ctx.error(path, "required")
    if not isinstance(raw, Mapping):
        subject = "must be" if path else "the top level must be"
        raise ctx.error(path, f"{subject} a mapping, got {_type_name(raw)}")
    for key in raw:
        if not isinstance(key, str):
            raise ctx.error(path, f"keys must be strings, got {key!r}")
    return dict(raw)


def _required_str(ctx: _Context, mapping: Mapping[str, Any], key: str, path: str) -> str:
    value = mapping.get(key)
    if value is None:
        raise ctx.error(f"{path}.{key}", "required")
    if not isinstance(value, str) or not value:
        raise ctx.error(f"{path}.{key}", f"must be a non-empty string, got {value!r}")
    return value


def _user_id(ctx: _Context, value: Any, path: str) -> str:
    if value is None:
        raise ctx.error(path, "required")
    if not isinstance(value, str) or not is_user_id(value):
        raise ctx.error(path, f"invalid user id {value!r}: {USER_ID_RULE}")
    return value


def _optional_url(ctx: _Context, value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"https?://[^/\s]+", value):
        raise ctx.error(path, f"must be an http:// or https:// URL, got {value!r}")
    return value


def _reject_unknown_keys(
    ctx: _Context, mapping: Mapping[str, Any], path: str, allowed: set[str]
) -> None:
    # These sections are ours, not LiteLLM's: a misspelt key would otherwise be silently ignored.
    for key in mapping:
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            raise ctx.error(f"{path}.{key}", f"unknown key (expected one of: {expected})")


def _type_name(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


__all__ = [
    "ConfigError",
    "GeneralSettings",
    "HeaderPattern",
    "MemoryClientRule",
    "MemorySettings",
    "ModelAlias",
    "ProxyConfig",
    "Secret",
    "UserIdMappings",
    "load_config",
    "parse_config",
]

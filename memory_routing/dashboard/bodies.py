"""JSON bodies of the local endpoints (/health, /memory-routing/info, /v1/models).

Pure logic. Nothing here may contain a secret: credentials appear only as where they come
from (``os.environ/VAR (set)``), request headers that carry credentials are redacted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, UTC
from typing import Any

from memory_routing.routing.classify import ClientIdentity
from memory_routing.config.schema import ProxyConfig

# Header names that carry credentials or session state in some client or provider.
_SECRET_HEADER_NAME = re.compile(r"auth|key|token|secret|cookie|session|password", re.IGNORECASE)
REDACTED = "[redacted]"
_MAX_ECHOED_VALUE = 256


def iso_time(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat().replace("+00:00", "Z")


def redact_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    shown: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if _SECRET_HEADER_NAME.search(key):
            value = REDACTED
        elif len(value) > _MAX_ECHOED_VALUE:
            value = value[:_MAX_ECHOED_VALUE] + "…"
        shown[key] = value if key not in shown else f"{shown[key]}, {value}"
    return shown


def config_summary(config: ProxyConfig, loaded_at: float, last_error: str | None) -> dict[str, Any]:
    mappings = config.user_id_mappings
    memory = config.memory
    return {
        "path": config.source,
        "loaded_at": iso_time(loaded_at),
        "last_reload_error": last_error,
        "models": [
            {
                "model_name": alias.model_name,
                "model": alias.model,
                "provider": alias.provider_hint,
                "api_base": alias.api_base,
                "api_key": alias.api_key.describe() if alias.api_key else None,
                "extra_headers": [name for name, _ in alias.extra_headers],
                "unset_env_vars": list(alias.unset_env_vars),
            }
            for alias in config.models
        ],
        "user_id_mappings": {
            "custom_header": mappings.custom_header,
            "header_patterns": [rule.as_dict() for rule in mappings.header_patterns],
            "default_user_id": mappings.default_user_id,
        },
        "memory": {
            "backend": memory.backend,
            "budget_tokens": memory.budget_tokens,
            "deadline_ms": memory.deadline_ms,
            "retention_days": memory.retention_days,
            "clients": [{"rule": rule.rule_name, "mode": rule.mode, "user_id": rule.user_id, "header": rule.header,
                         "pattern": rule.pattern} for rule in memory.clients],
            "active": memory.active,
            "enabled": memory.enabled,
            "base_url": memory.base_url,
            "api_key": memory.api_key.describe() if memory.api_key else None,
        },
        "master_key": config.general.master_key.describe() if config.general.master_key else None,
        "warnings": list(config.warnings),
    }


def health_body(version: str, started_at: float, config_loaded_at: float, last_error: str | None) -> dict[str, Any]:
    return {
        "status": "healthy",
        "timestamp": iso_time(datetime.now(UTC).timestamp()),
        "version": version,
        "started_at": iso_time(started_at),
        "config_loaded_at": iso_time(config_loaded_at),
        "config_error": last_error,
    }


def routing_info_body(
    identity: ClientIdentity,
    headers: Iterable[tuple[str, str]],
    listener: str,
    summary: dict[str, Any],
) -> dict[str, Any]:
    return {
        **identity.as_dict(),
        "listener": listener,
        "request_headers": redact_headers(headers),
        "config": summary,
    }


def openai_models_body(config: ProxyConfig, created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": _owner(config, name)}
            for name in config.aliases
        ],
    }


def anthropic_models_body(config: ProxyConfig, created: int) -> dict[str, Any]:
    names = list(config.aliases)
    return {
        "data": [
            {"type": "model", "id": name, "display_name": name, "created_at": iso_time(created)}
            for name in names
        ],
        "has_more": False,
        "first_id": names[0] if names else None,
        "last_id": names[-1] if names else None,
    }


def _owner(config: ProxyConfig, name: str) -> str:
    alias = config.model(name)
    return (alias.provider_hint if alias else None) or "litellm"

"""Parse a LiteLLM-style ``config.yaml`` into typed, frozen objects.

Pure logic: no mitmproxy or LiteLLM imports, so the parser is usable (and testable) on its own.
Two layers:

- the file's shape, as pydantic models (``ConfigFile`` and its sections): frozen, strict, and an
  unknown key in a section of the proxy's own, or in ``litellm_params``, is an error naming the
  closest known key;
- what the rest of the proxy reads, as frozen dataclasses (``ProxyConfig`` and below): built from
  the validated file with ``os.environ/`` references resolved and the defaults decided.

Every error names the file and the key path, e.g.
``config.yaml: user_id_mappings.header_patterns[1].pattern: invalid regex: ...``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from memory_routing.config.litellm_params import LITELLM_PARAMS
from memory_routing.errors import ConfigError
from memory_routing.wire.header_values import CONTROL_IN_VALUE, USER_ID_RULE, is_user_id

ENV_PREFIX = "os.environ/"
DEFAULT_CUSTOM_HEADER = "x-memory-user-id"
DEFAULT_USER_ID = "default-dev"
DEFAULT_SUPERMEMORY_BASE_URL = "https://api.supermemory.ai/v3"
TRANSLATE_MODES = ("auto", "always", "never")
MEMORY_BACKENDS = ("local", "supermemory", "off")
# What a call does with memory: "both" reads (recall) and writes (stores the turn).
MEMORY_MODES = ("off", "read", "write", "both")
# A ceiling: the adaptive budget (memory/recall.py) gives a narrow question 600 tokens and uses
# the rest only for questions with many strong matches (LoCoMo: median block 3,600 characters).
DEFAULT_MEMORY_BUDGET_TOKENS = 2000
# All of one conversation's recall blocks together (they are re-sent with every later request).
DEFAULT_MEMORY_CONVERSATION_BUDGET_TOKENS = 4000
DEFAULT_MEMORY_DEADLINE_MS = 50
# The fleet (storage.*): how long a proxy's slot at an upstream host outlives the proxy, and how
# many rows wait in memory for a database that is down.
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_OUTAGE_QUEUE_ROWS = 10_000
DATABASE_URL_SCHEMES = ("postgresql", "postgres")
REDIS_URL_SCHEMES = ("redis", "rediss", "unix")

# RFC 9110 token characters: anything else cannot be a header name.
HEADER_NAME_PATTERN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_ENV_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HTTP_URL = re.compile(r"https?://[^/\s]+")
# A "did you mean" is offered for a key at least this close (difflib's ratio) to a known one.
_SUGGESTION_CUTOFF = 0.6
# Sections whose known keys are few enough to list in full after an unknown one.
_LISTED_KEYS_AT_MOST = 12


# --- the public, resolved config ---------------------------------------------------------


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
    conversation_budget_tokens: int = DEFAULT_MEMORY_CONVERSATION_BUDGET_TOKENS
    deadline_ms: float = DEFAULT_MEMORY_DEADLINE_MS
    clients: tuple[MemoryClientRule, ...] = ()
    retention_days: float | None = None  # None: memories are kept until deleted

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
class StorageSettings:
    """``storage``: the shared servers of a fleet of proxies; None: the local default (one file).

    ``database_url`` holds memories, recall blocks and usage rows in PostgreSQL; ``redis_url``
    the cookie jars and the per-host in-flight cap. Either may be set alone. Both are Secrets
    (a URL carries a password): printable only as where they came from.
    """

    database_url: Secret | None = None
    redis_url: Secret | None = None
    proxy_name: str | None = None  # None: the machine's host name (see fleet.identity)
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    outage_queue_rows: int = DEFAULT_OUTAGE_QUEUE_ROWS

    @property
    def uses_database(self) -> bool:
        return self.database_url is not None and self.database_url.is_set

    @property
    def uses_redis(self) -> bool:
        return self.redis_url is not None and self.redis_url.is_set


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
    storage: StorageSettings = StorageSettings()

    def model(self, name: str) -> ModelAlias | None:
        return self._models_by_name.get(name)

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self._models_by_name)


# --- field types of the file -------------------------------------------------------------
# Each raises its own message; ``_message`` turns pydantic's built-in errors into the same style.


def _invalid(message: str, key: str | None = None) -> PydanticCustomError:
    """An error whose message is ``message`` as is; ``key``: the key under the location at fault."""
    context: dict[str, str] = {"message": message}
    if key is not None:
        context["key"] = key
    return PydanticCustomError("config", "{message}", context)


def _type_name(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _header_name(value: object) -> str:
    if not isinstance(value, str) or not HEADER_NAME_PATTERN.fullmatch(value):
        raise _invalid(f"not a valid HTTP header name: {value!r}")
    return value


def _extra_header_name(value: object) -> str:
    try:
        return _header_name(value)
    except PydanticCustomError:
        # The name is the key path's last part already: the message does not repeat it.
        raise _invalid("not a valid HTTP header name") from None


def _regex_text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid(f"must be a non-empty string, got {value!r}")
    try:
        re.compile(value)
    except re.error as e:
        raise _invalid(f"invalid regex: {e}") from e
    return value


def _user_id(value: object) -> str:
    if value is None:
        raise _invalid("required")
    if not isinstance(value, str) or not is_user_id(value):
        raise _invalid(f"invalid user id {value!r}: {USER_ID_RULE}")
    return value


def _non_empty_str(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid(f"must be a non-empty string, got {value!r}")
    return value


def _http_url(value: object) -> str:
    if not isinstance(value, str) or not _HTTP_URL.match(value):
        raise _invalid(f"must be an http:// or https:// URL, got {value!r}")
    return value


def _server_url(schemes: tuple[str, ...], example: str) -> Callable[[object, ValidationInfo], Secret]:
    """A server's URL as a Secret (it may carry a password): the scheme is checked on the resolved
    value, and no error message repeats the value."""

    def validate(value: object, info: ValidationInfo) -> Secret:
        secret = _secret(value, info)
        if secret.value is not None:
            scheme, sep, rest = secret.value.partition("://")
            if not sep or scheme.lower() not in schemes or not rest:
                shown = "the value of " + ENV_PREFIX + secret.env_var if secret.env_var else "the value"
                raise _invalid(f"must be a URL like {example} ({shown} is not; it is not shown here, "
                               "as it may hold a password)")
        return secret

    return validate


def _env_var_name(text: str) -> str | None:
    """The variable an ``os.environ/VAR`` string names; None for any other string."""
    if not text.startswith(ENV_PREFIX):
        return None
    var = text[len(ENV_PREFIX):]
    if not _ENV_VAR_NAME.fullmatch(var):
        raise _invalid(f"{text!r} does not name a valid environment variable")
    return var


def _secret(value: object, info: ValidationInfo) -> Secret:
    """A credential: an inline string or an ``os.environ/VAR`` reference, resolved here so that
    the Secret keeps where the value came from."""
    if not isinstance(value, str):
        raise _invalid(f"must be a string, got {_type_name(value)}")
    environ: Mapping[str, str] = info.context["environ"] if info.context else os.environ
    var = _env_var_name(value)
    resolved = value if var is None else environ.get(var) or None
    if resolved is not None and CONTROL_IN_VALUE.search(resolved):
        # The value is sent in a header; say which key is wrong without echoing the secret.
        raise _invalid("contains a line break or NUL, which cannot be sent in a header")
    return Secret(value=resolved, env_var=var)


def _header_value(value: object, info: ValidationInfo) -> Secret:
    if value is None:
        raise _invalid("header value is empty")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return _secret(value, info)


def _choice(choices: tuple[str, ...], yaml_false: str | None, yaml_true: str | None) -> Callable[[object], str]:
    """One of ``choices``; YAML reads unquoted ``off``/``no`` as false and ``on``/``yes`` as true,
    so a boolean stands for the choice it reads as, where there is one."""

    def validate(value: object) -> str:
        if value is False and yaml_false is not None:
            return yaml_false
        if value is True and yaml_true is not None:
            return yaml_true
        if value in choices:
            return str(value)
        shown = str(value).lower() if isinstance(value, bool) else repr(value)
        raise _invalid(f"must be one of {', '.join(choices)}, got {shown}")

    return validate


def _number(low: float, high: float, what: str, whole: bool = False) -> Callable[[object], float]:
    def validate(value: object) -> float:
        kinds = (int,) if whole else (int, float)
        if not isinstance(value, kinds) or isinstance(value, bool) or not low <= value <= high:
            raise _invalid(f"must be {what}, got {value!r}")
        return value

    return validate


HeaderName = Annotated[str, BeforeValidator(_header_name)]
ExtraHeaderName = Annotated[str, BeforeValidator(_extra_header_name)]
RegexText = Annotated[str, BeforeValidator(_regex_text)]
UserId = Annotated[str, BeforeValidator(_user_id)]
NonEmptyStr = Annotated[str, BeforeValidator(_non_empty_str)]
HttpUrl = Annotated[str, BeforeValidator(_http_url)]
SecretValue = Annotated[Secret, PlainValidator(_secret)]
HeaderValue = Annotated[Secret, PlainValidator(_header_value)]
DatabaseUrl = Annotated[Secret, PlainValidator(_server_url(DATABASE_URL_SCHEMES, "postgresql://user@host:5432/db"))]
RedisUrl = Annotated[Secret, PlainValidator(_server_url(REDIS_URL_SCHEMES, "redis://host:6379/0"))]
MemoryMode = Annotated[str, BeforeValidator(_choice(MEMORY_MODES, yaml_false="off", yaml_true="both"))]
MemoryBackend = Annotated[str, BeforeValidator(_choice(MEMORY_BACKENDS, yaml_false="off", yaml_true=None))]
TranslateMode = Annotated[str, BeforeValidator(_choice(TRANSLATE_MODES, yaml_false="never", yaml_true=None))]


def _provider_model(value: object) -> str:
    # "" is what an unset os.environ/ reference leaves; load checks that one was there.
    if value is None or not isinstance(value, str):
        raise _invalid("required: the provider model, e.g. anthropic/claude-sonnet-4-5")
    return value


# --- the file's shape --------------------------------------------------------------------


def unknown_key_message(key: str, known: Collection[str], what: str = "unknown key") -> str:
    """``what`` plus the closest known key, and the known keys when they are few."""
    message = what
    if close := difflib.get_close_matches(key, sorted(known), n=1, cutoff=_SUGGESTION_CUTOFF):
        message += f", did you mean `{close[0]}`?"
    if len(known) <= _LISTED_KEYS_AT_MOST:
        message += f" (expected one of: {', '.join(sorted(known))})"
    return message


class _Section(BaseModel):
    """A section of the file: frozen, strict (YAML's own types, no coercion), and an unknown
    key is an error naming the closest known one, not silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, protected_namespaces=())

    # Keys taken besides the declared fields (``litellm_params``: whatever LiteLLM takes).
    extra_known_keys: ClassVar[frozenset[str]] = frozenset()
    unknown_key_text: ClassVar[str] = "unknown key"

    @classmethod
    def known_keys(cls) -> frozenset[str]:
        return frozenset(cls.model_fields) | cls.extra_known_keys

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: object) -> object:
        if not isinstance(data, Mapping):
            return data  # pydantic says "must be a mapping"
        known = cls.known_keys()
        for key in data:
            if not isinstance(key, str):
                raise _invalid(f"keys must be strings, got {key!r}")
            if key not in known:
                raise _invalid(unknown_key_message(key, known, cls.unknown_key_text), key=key)
        return data


class LitellmParams(_Section):
    """``model_list[i].litellm_params``: the keys the proxy reads itself, and any other key
    LiteLLM takes (kept for LiteLLM). A key LiteLLM does not take is a typo: ``api_bsae`` would
    otherwise send the alias to the provider's default host with the configured key."""

    model_config = ConfigDict(extra="allow")
    extra_known_keys = LITELLM_PARAMS
    unknown_key_text = "unknown key: LiteLLM takes no such parameter"

    model: Annotated[str, BeforeValidator(_provider_model)] = Field(default=None, validate_default=True)  # type: ignore[assignment]
    api_base: HttpUrl | None = None
    api_key: SecretValue | None = None
    custom_llm_provider: str | None = None
    extra_headers: dict[ExtraHeaderName, HeaderValue] | None = None
    drop_params: bool | None = None


class ModelEntry(_Section):
    """One ``model_list`` entry (LiteLLM's ``model_info`` is accepted and not read)."""

    model_name: NonEmptyStr
    litellm_params: LitellmParams
    model_info: dict[str, Any] | None = None
    memory: bool = True
    translate: TranslateMode = "auto"


class HeaderPatternEntry(_Section):
    header: HeaderName = "user-agent"
    pattern: RegexText
    user_id: UserId


class UserIdMappingsSection(_Section):
    custom_header: HeaderName = DEFAULT_CUSTOM_HEADER
    header_patterns: list[HeaderPatternEntry] | None = None
    default_user_id: UserId = DEFAULT_USER_ID


class MemoryClientEntry(_Section):
    """``memory.clients[i]``: ``user_id``, or ``pattern`` (with ``header``), and a ``mode``."""

    mode: MemoryMode
    user_id: UserId | None = None
    header: HeaderName | None = None
    pattern: RegexText | None = None

    @model_validator(mode="after")
    def _one_match(self) -> MemoryClientEntry:
        if (self.user_id is None) == (self.pattern is None):
            raise _invalid("give either user_id (a memory user id) or pattern (with header, default user-agent)")
        if self.user_id is not None and self.header is not None:
            raise _invalid("goes with pattern, not with user_id", key="header")
        return self


class MemorySection(_Section):
    enabled: bool | None = None
    api_key: SecretValue | None = None
    base_url: HttpUrl | None = None
    backend: MemoryBackend | None = None
    budget_tokens: Annotated[int, BeforeValidator(_number(50, 100_000, "a whole number from 50 to 100000", whole=True))] = (
        DEFAULT_MEMORY_BUDGET_TOKENS
    )
    conversation_budget_tokens: Annotated[int, BeforeValidator(_number(
        0, 1_000_000, "a whole number from 0 to 1000000", whole=True))] = DEFAULT_MEMORY_CONVERSATION_BUDGET_TOKENS
    deadline_ms: Annotated[float, BeforeValidator(_number(1, 10_000, "a number of milliseconds from 1 to 10000"))] = (
        DEFAULT_MEMORY_DEADLINE_MS
    )
    clients: list[MemoryClientEntry] | None = None
    retention_days: Annotated[float, BeforeValidator(_number(
        1, 36_500, "a number of days from 1 to 36500 (or null: keep memories until deleted)"))] | None = None


class StorageSection(_Section):
    database_url: DatabaseUrl | None = None
    redis_url: RedisUrl | None = None
    proxy_name: UserId | None = None  # same characters as a user id: it is shown and stored
    lease_seconds: Annotated[float, BeforeValidator(_number(
        2, 3600, "a number of seconds from 2 to 3600"))] = DEFAULT_LEASE_SECONDS
    outage_queue_rows: Annotated[int, BeforeValidator(_number(
        0, 10_000_000, "a whole number from 0 to 10000000", whole=True))] = DEFAULT_OUTAGE_QUEUE_ROWS


class GeneralSettingsSection(BaseModel):
    """LiteLLM's ``general_settings``: its other keys are LiteLLM's proxy's, kept and not read."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)

    master_key: SecretValue | None = None


class ConfigFile(_Section):
    """The whole file. LiteLLM's proxy sections this proxy does not act on are accepted, so that
    a config written for LiteLLM's proxy (or the older FastAPI design) loads unchanged."""

    model_list: list[ModelEntry] | None = None
    general_settings: GeneralSettingsSection | None = None
    user_id_mappings: UserIdMappingsSection | None = None
    memory: MemorySection | None = None
    storage: StorageSection | None = None
    litellm_settings: Any = None
    router_settings: Any = None
    environment_variables: Any = None
    litellm_backend_url: Any = None


IGNORED_SECTIONS = frozenset({"litellm_settings", "router_settings", "environment_variables", "litellm_backend_url"})
# A top-level key this close to one of these is a typo (an error); any other unknown one is
# some other LiteLLM proxy section, warned about and ignored.
_OWN_SECTIONS = ("model_list", "general_settings", "user_id_mappings", "memory", "storage")


# --- loading -----------------------------------------------------------------------------


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
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping, got {_type_name(raw)}")
    return _Builder(source, environ).build(raw)


class _Builder:
    """One parse: the file name, the environment and the warnings collected on the way."""

    def __init__(self, source: str, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ
        self.warnings: list[str] = []
        # Unset os.environ/ variables outside the secrets, by model_list index.
        self.unset_by_entry: dict[int, list[str]] = {}
        # model_list indexes whose litellm_params.model is an unset variable.
        self.unset_models: set[int] = set()

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{self.source}: {path}: {message}")

    def build(self, raw: Mapping[Any, Any]) -> ProxyConfig:
        sections = self._known_sections(raw)
        try:
            parsed = ConfigFile.model_validate(self._resolve_env(sections), context={"environ": self.environ})
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            raise self.error(_key_path(first), _message(first)) from None

        models = tuple(self._alias(i, entry) for i, entry in enumerate(parsed.model_list or ()))
        models_by_name: dict[str, ModelAlias] = {}
        for index, alias in enumerate(models):
            if alias.model_name in models_by_name:
                self.warn(f"model_list[{index}].model_name", f"duplicate alias {alias.model_name!r}: the first entry is used")
                continue
            models_by_name[alias.model_name] = alias
        general = self._general(parsed.general_settings)
        user_id_mappings = self._user_id_mappings(parsed.user_id_mappings or UserIdMappingsSection())
        memory = self._memory(parsed.memory or MemorySection())
        storage = self._storage(parsed.storage or StorageSection())
        return ProxyConfig(
            source=self.source,
            models=models,
            general=general,
            user_id_mappings=user_id_mappings,
            memory=memory,
            warnings=tuple(self.warnings),
            _models_by_name=MappingProxyType(models_by_name),
            storage=storage,
        )

    def _known_sections(self, raw: Mapping[Any, Any]) -> dict[str, Any]:
        sections: dict[str, Any] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                raise self.error("", f"top-level keys must be strings, got {key!r}")
            if key in ConfigFile.model_fields:
                sections[key] = value
            elif difflib.get_close_matches(key, _OWN_SECTIONS, n=1, cutoff=_SUGGESTION_CUTOFF):
                raise self.error(key, unknown_key_message(key, _OWN_SECTIONS, "unknown section"))
            else:
                self.warn(key, "unknown section, ignored")
        if "litellm_backend_url" in sections:
            self.warn("litellm_backend_url", "ignored: the addon resolves providers itself through LiteLLM")
        return sections

    # --- the os.environ/ pre-pass -------------------------------------------------------

    def _resolve_env(self, sections: dict[str, Any]) -> dict[str, Any]:
        """Replace ``os.environ/VAR`` strings at every depth of the sections LiteLLM's proxy
        resolves them in, as it does. Credentials are left as written: their validator
        resolves them, so that each keeps the name of its variable."""
        resolved = dict(sections)
        model_list = sections.get("model_list")
        if isinstance(model_list, list):
            resolved["model_list"] = [self._resolve_entry(i, entry) for i, entry in enumerate(model_list)]
        general = sections.get("general_settings")
        if isinstance(general, Mapping):
            resolved["general_settings"] = {
                k: v if k == "master_key" else self._resolve(v, ("general_settings", k)) for k, v in general.items()
            }
        memory = sections.get("memory")
        if isinstance(memory, Mapping) and "base_url" in memory:
            resolved["memory"] = {**memory, "base_url": self._resolve(memory["base_url"], ("memory", "base_url"))}
        return resolved

    def _resolve_entry(self, index: int, entry: Any) -> Any:
        if not isinstance(entry, Mapping) or not isinstance(params := entry.get("litellm_params"), Mapping):
            return entry
        unset = self.unset_by_entry.setdefault(index, [])
        base = ("model_list", index, "litellm_params")
        resolved = {
            key: value if key in ("api_key", "extra_headers") else self._resolve(value, (*base, key), unset)
            for key, value in params.items()
        }
        if "model" in params and resolved["model"] is None and params["model"] is not None:
            self.unset_models.add(index)
            resolved["model"] = ""  # the unset variable is reported; the alias answers with an error
        return {**entry, "litellm_params": resolved}

    def _resolve(self, node: Any, path: tuple[str | int, ...], unset: list[str] | None = None) -> Any:
        if isinstance(node, str):
            try:
                var = _env_var_name(node)
            except PydanticCustomError as e:
                raise self.error(_dotted(path), e.context["message"] if e.context else str(e)) from None
            if var is None:
                return node
            value = self.environ.get(var) or None
            if value is None:
                if unset is not None and var not in unset:
                    unset.append(var)
                self.warn(_dotted(path), f"environment variable {var} is not set")
            return value
        if isinstance(node, Mapping):
            return {k: self._resolve(v, (*path, k), unset) for k, v in node.items()}
        if isinstance(node, list):
            return [self._resolve(v, (*path, i), unset) for i, v in enumerate(node)]
        return node

    def _unset_secret(self, secret: Secret | None, path: str, consequence: str = "") -> str | None:
        """Warns about a credential whose variable is unset; returns the variable's name."""
        if secret is None or secret.env_var is None or secret.is_set:
            return None
        self.warn(path, f"environment variable {secret.env_var} is not set{consequence}")
        return secret.env_var

    # --- sections ---------------------------------------------------------------------

    def _alias(self, index: int, entry: ModelEntry) -> ModelAlias:
        params = entry.litellm_params
        path = f"model_list[{index}].litellm_params"
        unset = list(self.unset_by_entry.get(index, ()))
        if not params.model and index not in self.unset_models:
            raise self.error(f"{path}.model", "required: the provider model, e.g. anthropic/claude-sonnet-4-5")
        headers = tuple((params.extra_headers or {}).items())
        unset_secrets = [self._unset_secret(params.api_key, f"{path}.api_key")] + [
            self._unset_secret(value, f"{path}.extra_headers.{name}") for name, value in headers
        ]
        unset += [var for var in unset_secrets if var is not None]
        other = dict(params.model_extra or {})
        if params.drop_params is not None:
            other["drop_params"] = params.drop_params
        return ModelAlias(
            model_name=entry.model_name,
            model=params.model,
            api_base=params.api_base,
            api_key=params.api_key,
            custom_llm_provider=params.custom_llm_provider,
            extra_headers=headers,
            other_params=MappingProxyType(other),
            unset_env_vars=tuple(dict.fromkeys(unset)),
            memory=entry.memory,
            translate=entry.translate,
        )

    def _general(self, section: GeneralSettingsSection | None) -> GeneralSettings:
        if section is None:
            return GeneralSettings(master_key=None, other=MappingProxyType({}))
        master_key = section.master_key
        self._unset_secret(master_key, "general_settings.master_key")
        if master_key is not None:
            # LiteLLM's proxy checks it on every call; this proxy does not, and must not look as if it did.
            self.warn(
                "general_settings.master_key",
                "not enforced by this proxy (it is not LiteLLM's proxy server); to require credentials on "
                "the gateway use mitmproxy's proxyauth option (see docs/security.md)",
            )
        return GeneralSettings(master_key=master_key, other=MappingProxyType(dict(section.model_extra or {})))

    def _user_id_mappings(self, section: UserIdMappingsSection) -> UserIdMappings:
        patterns = tuple(
            HeaderPattern(index=i, header=item.header.lower(), pattern=item.pattern, user_id=item.user_id,
                          regex=re.compile(item.pattern))
            for i, item in enumerate(section.header_patterns or ())
        )
        return UserIdMappings(
            custom_header=section.custom_header.lower(), header_patterns=patterns,
            default_user_id=section.default_user_id,
        )

    def _memory(self, section: MemorySection) -> MemorySettings:
        backend, enabled, api_key = section.backend, section.enabled, section.api_key
        wants_supermemory = backend is None and enabled is not False
        consequence = (": memory (Supermemory) is off" if backend == "supermemory"
                       else ": the local memory is used" if wants_supermemory else "")
        self._unset_secret(api_key, "memory.api_key", consequence)
        key_set = api_key is not None and api_key.is_set
        if backend is None:
            # Supermemory when its key resolves; otherwise memory is still on, embedded.
            resolved = "off" if enabled is False else "supermemory" if key_set else "local"
            if enabled and not key_set:
                self.warn("memory.enabled", "memory is enabled but memory.api_key is not set: using the local memory")
        else:
            resolved = backend
            if backend == "supermemory" and enabled is False:
                self.warn("memory.enabled", "false turns Supermemory off: memory is off")
        clients = tuple(_memory_client(i, item) for i, item in enumerate(section.clients or ()))
        if clients and resolved != "local":
            self.warn("memory.clients", f"only the local memory reads these; the backend is {resolved}")
        return MemorySettings(
            enabled=enabled, api_key=api_key, base_url=(section.base_url or DEFAULT_SUPERMEMORY_BASE_URL).rstrip("/"),
            backend=resolved, backend_configured=backend is not None, budget_tokens=section.budget_tokens,
            conversation_budget_tokens=section.conversation_budget_tokens, deadline_ms=float(section.deadline_ms),
            clients=clients,
            retention_days=float(section.retention_days) if section.retention_days is not None else None,
        )


    def _storage(self, section: StorageSection) -> StorageSettings:
        # An unset variable leaves that part local: said loudly, since a fleet whose members
        # fall back to their own files no longer shares anything.
        self._unset_secret(section.database_url, "storage.database_url",
                           ": memories and usage stay in this proxy's local file")
        self._unset_secret(section.redis_url, "storage.redis_url",
                           ": cookies and the in-flight cap stay in this proxy")
        return StorageSettings(
            database_url=section.database_url, redis_url=section.redis_url, proxy_name=section.proxy_name,
            lease_seconds=float(section.lease_seconds), outage_queue_rows=section.outage_queue_rows,
        )


def _memory_client(index: int, item: MemoryClientEntry) -> MemoryClientRule:
    if item.user_id is not None:
        return MemoryClientRule(index=index, mode=item.mode, user_id=item.user_id)
    assert item.pattern is not None  # MemoryClientEntry checked: user_id or pattern
    return MemoryClientRule(index=index, mode=item.mode, header=(item.header or "user-agent").lower(),
                            pattern=item.pattern, regex=re.compile(item.pattern))


# --- pydantic's errors in the file's terms -----------------------------------------------


def _dotted(path: tuple[str | int, ...]) -> str:
    """``("model_list", 2, "litellm_params", "api_base")`` -> ``model_list[2].litellm_params.api_base``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _key_path(error: ErrorDetails) -> str:
    # "[key]": pydantic's marker for a mapping key (an extra_headers name) rather than its value.
    path = tuple(part for part in error["loc"] if part != "[key]")
    key = (error.get("ctx") or {}).get("key")
    return _dotted((*path, key) if key is not None else path)


def _message(error: ErrorDetails) -> str:
    """The message for one error: our validators' own, or pydantic's built-in ones reworded."""
    kind, value = error["type"], error.get("input")
    if kind == "config":
        return str((error.get("ctx") or {})["message"])
    if kind == "missing":
        return "required"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "required" if value is None else f"must be a mapping, got {_type_name(value)}"
    if kind == "list_type":
        return f"must be a list, got {_type_name(value)}"
    if kind == "string_type":
        return f"must be a string, got {_type_name(value)}"
    if kind == "bool_type":
        return f"must be true or false, got {value!r}"
    if kind == "extra_forbidden":
        return "unknown key"
    return error["msg"]


__all__ = [
    "ConfigError",
    "ConfigFile",
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
    "unknown_key_message",
]

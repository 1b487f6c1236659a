"""The proxy's one error hierarchy (pure: imports neither mitmproxy nor LiteLLM).

In the style of httpx's exceptions: one root, a branch per kind of failure.

    MemoryRoutingError
    ├── ConfigError            a config file that cannot be used (config.schema: names the file and
    │                          key path; a misspelt key also the closest known one)
    ├── MemoryStoreError       the embedded memory
    │   ├── MemoryRecordError      a record (a line of an import) that is no valid memory
    │   ├── MemoryTimeoutError     a read past its deadline
    │   └── MemoryStoreClosedError the store or writer used after close()
    ├── InvalidMemoryMode      memory.modes: an unusable x-memory-mode header (answered 400)
    ├── WorkerUnavailable      wire.large_bodies: the body worker failed; parsed on the loop instead
    ├── UsageQueryError        dashboard.usage_rows: a usage query the store cannot answer
    ├── DashboardRequestError  dashboard.api: a refused dashboard API request (a JSON error answer)
    └── ProxyRefusal           a request the proxy answers itself: status, message, param, retryable
        ├── RouteRefused           routing.planner / addons.router
        │   ├── UnresolvableModel      llm.providers: neither an alias nor a model LiteLLM places
        │   └── UnsupportedProvider    llm.providers: LiteLLM knows it, URL rewriting cannot reach it
        ├── InvalidUserId          routing.classify: an unusable explicit user id header
        └── TranslationRefused     llm.translation
            └── UnsupportedParams      llm.parameters: strict mode, parameters the target lacks

A ProxyRefusal is rendered into the client's shape once, by ``wire.responses.refusal_response``.
"""

from __future__ import annotations


class MemoryRoutingError(Exception):
    """Root of every error the proxy raises on purpose."""


class ConfigError(MemoryRoutingError, ValueError):
    """A config file that cannot be used; the message is one line naming the file and key path,
    e.g. ``config.yaml: model_list[2].litellm_params.api_base: must be an http:// or https:// URL``.

    At start it stops mitmdump with that line alone (addons.routing_config); on reload it is logged and
    the last good config keeps serving."""


class MemoryStoreError(MemoryRoutingError):
    """Base of every error the embedded memory raises."""


class ProxyRefusal(MemoryRoutingError):
    """The proxy answers this request itself, with ``status`` and ``message`` in the client's shape.

    ``param``: the request field at fault, when the client's error shape has a place for it.
    ``retryable``: whether sending the same request again can help (``x-should-retry``).
    """

    status: int = 500
    retryable: bool = False

    def __init__(
        self, status: int | None, message: str, *, param: str | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.message = message
        self.param = param
        if retryable is not None:
            self.retryable = retryable


class RouteRefused(ProxyRefusal):
    """The request cannot be routed."""


class UnresolvableModel(RouteRefused, LookupError):
    """Neither an alias nor a model LiteLLM can place."""

    status = 400

    def __init__(self, model: str) -> None:
        super().__init__(None, model, param="model")
        self.model = model


class UnsupportedProvider(RouteRefused, LookupError):
    """LiteLLM knows the provider, but the proxy cannot reach it by rewriting URLs."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(None, message, param="model")


class InvalidUserId(ProxyRefusal, ValueError):
    """The client's explicit user id header is unusable; answer 400, never forward it."""

    status = 400

    def __init__(self, header: str, reason: str) -> None:
        super().__init__(None, f"invalid {header} header: {reason}")
        self.header = header


class TranslationRefused(ProxyRefusal):
    """The request (or the provider's answer) cannot be translated."""


class UnsupportedParams(TranslationRefused, ValueError):
    """Strict mode (``drop_params: false``): the target does not take these parameters."""

    status = 400

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__(None, ", ".join(names))
        self.names = names


class MemoryRecordError(MemoryStoreError):
    """A record (for example a line of an import) is not a valid memory."""


class MemoryTimeoutError(MemoryStoreError):
    """A read ran past its deadline and was interrupted."""


class MemoryStoreClosedError(MemoryStoreError):
    """The store or the writer was used after close()."""


class InvalidMemoryMode(MemoryRoutingError, ValueError):
    """The client's x-memory-mode header is unusable: answer 400, never guess."""


class WorkerUnavailable(MemoryRoutingError):
    """The body worker could not read this body (it failed, timed out or would not start): the
    proxy parses it on the event loop instead."""


class UsageQueryError(MemoryRoutingError, ValueError):
    """A usage query the store cannot answer (unknown grouping or bucket, bad range)."""


class DashboardRequestError(MemoryRoutingError):
    """A request the dashboard API refuses; becomes a JSON error answer."""

    def __init__(self, status: int, message: str, error_type: str = "invalid_request_error",
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.headers = headers


class FleetError(MemoryRoutingError):
    """Base of the errors of the fleet's shared servers (PostgreSQL, Redis)."""


class SharedServerUnavailable(FleetError):
    """PostgreSQL or Redis cannot be reached now (down, slow past the deadline, or not yet
    migrated): the caller degrades to its local fallback or queues, and the call goes on."""


class MigrationError(FleetError):
    """The database's schema cannot be brought to this proxy's version (a failed migration, or a
    database migrated by a newer proxy)."""

"""Translate a model call between API formats with LiteLLM's own transformations.

No mitmproxy imports. LiteLLM does every format mapping: the client's body becomes LiteLLM's
OpenAI-shaped completion arguments (its Anthropic adapter for ``/v1/messages`` clients), those
become the provider's native body (its provider configs), and the provider's answer comes
back the same way, through LiteLLM's ``ModelResponse`` / ``ModelResponseStream``. What is
written here is the plumbing LiteLLM leaves to its own HTTP client: framing server-sent
events, driving its pull-style stream wrapper from mitmproxy's push-style chunk callback, and
the final OpenAI chunk shape its ``CustomStreamWrapper`` would add.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

from memory_routing.wire.protocol import ClientProtocol, error_body
from memory_routing.errors import TranslationRefused, UnsupportedParams
from memory_routing.llm.parameters import fit_params, target_model
from memory_routing.wire.sse import SseDecoder, SseEvent

# First: llm sets LiteLLM's environment (no price-list download) before LiteLLM loads.
from memory_routing.llm import litellm  # isort: skip

import httpx  # LiteLLM's response transforms take an httpx.Response
from litellm.litellm_core_utils.prompt_templates.common_utils import strip_none_values_from_message
from litellm.llms.anthropic.chat.transformation import AnthropicConfig
from litellm.llms.anthropic.experimental_pass_through.adapters.transformation import LiteLLMAnthropicMessagesAdapter
from litellm.types.utils import ModelResponse, ModelResponseStream
from litellm.utils import ProviderConfigManager, get_optional_params

from memory_routing.llm.litellm_internals import (
    ANTHROPIC_TOOL_NAME_REVERSE_MAP_KEY,
    SteppedAnthropicStream,
    anthropic_chunk_parser,
    gemini_chunk_parser,
    gemini_model_response,
    gemini_request_body,
)

logger = logging.getLogger(__name__)

ANTHROPIC_VERSION = "2023-06-01"
# The OpenAI parameters get_optional_params maps per provider; anything else in a body is
# handed to it as a provider-specific extra, which it checks (and drops, with drop_params).
_MAPPED_PARAMS = frozenset(inspect.signature(get_optional_params).parameters) - {
    "model", "custom_llm_provider", "drop_params", "messages", "kwargs", "base_model",
}
# LiteLLM's own call options, never part of a provider body.
_LITELLM_ONLY = frozenset({"metadata", "litellm_metadata", "mock_response", "api_key", "api_base"})
# Completion arguments that are no provider parameter to judge: the stream's mode is the
# proxy's to set per provider (Gemini's is in the URL).
_NOT_FITTED = _LITELLM_ONLY | {"model", "messages", "stream", "stream_options"}


@dataclass(frozen=True)
class TranslatedRequest:
    body: bytes
    # Headers the provider needs besides its key: anthropic-version, betas LiteLLM chose.
    headers: tuple[tuple[str, str], ...]
    answer: AnswerTranslation
    # Client parameters the target has no equivalent for, left out (drop_params).
    dropped: tuple[str, ...] = ()
    # (parameter, value) lowered to the model's cap.
    fitted: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class AnswerTranslation:
    """What translating the answer needs to know about the request."""

    client: ClientProtocol
    provider: str
    provider_model: str
    include_usage: bool  # an OpenAI client asked for the usage chunk
    optional_params: dict[str, Any] = field(repr=False, compare=False)
    litellm_params: dict[str, Any] = field(repr=False, compare=False)
    # Anthropic adapter: tool names it shortened for OpenAI's 64-character limit.
    tool_name_mapping: dict[str, str] = field(repr=False, compare=False)

    def body(self, status: int, content_type: str, body: bytes) -> bytes:
        """A whole answer (or a provider error) rewritten for the client."""
        return self.translated(status, content_type, body)[0]

    def translated(self, status: int, content_type: str, body: bytes,
                   document: Any = None) -> tuple[bytes, dict[str, Any] | None]:
        """A whole answer (or a provider error) rewritten for the client, and the document the
        new body encodes (None for an error body), for its readers: nobody parses it again.
        ``document``: the answer already parsed (mitm.answer_json), else it is parsed here."""
        if status >= 400:
            return error_body(self.client, status, f"{self.provider}: {provider_error_message(body, status)}"), None
        if document is None:
            try:
                document = json.loads(body)
            except ValueError:
                raise TranslationRefused(502, f"{self.provider} answered with a body that is not JSON",
                                         retryable=True) from None
        if not isinstance(document, dict):
            raise TranslationRefused(502, f"{self.provider} answered with JSON that is not an object", retryable=True)
        response = self._model_response(document, status, content_type, body)
        if self.client is ClientProtocol.ANTHROPIC:
            message = LiteLLMAnthropicMessagesAdapter().translate_openai_response_to_anthropic(
                response, self.tool_name_mapping
            )
            translated = _plain(message)
        else:
            translated = _openai_completion(response)
        return json.dumps(translated, ensure_ascii=False).encode(), translated

    def stream_translator(self) -> StreamTranslator:
        return StreamTranslator(self)

    def _model_response(self, document: dict, status: int, content_type: str, body: bytes) -> ModelResponse:
        raw = httpx.Response(status, content=body, headers={"content-type": content_type})
        if self.provider == "anthropic":
            return AnthropicConfig().transform_parsed_response(
                completion_response=document,
                raw_response=raw,
                model_response=ModelResponse(),
                tool_name_reverse_map=_reverse_tool_map(self.litellm_params),
            )
        if self.provider == "gemini":
            return gemini_model_response(document, self.provider_model, self.optional_params, raw)
        return ModelResponse(**document)


def translate_request(
    client: ClientProtocol,
    provider: str,
    provider_model: str,
    payload: dict[str, Any],
    *,
    drop_params: bool = False,
    user_id: str | None = None,
    conversation_id: str | None = None,
) -> TranslatedRequest:
    """The provider's native body for a client body of ``client``'s format.

    ``user_id``: the memory user id, the only value sent as the provider's ``user``;
    with ``conversation_id`` it makes the ``prompt_cache_key`` (see parameters)."""
    completion, tool_name_mapping = _completion_arguments(client, provider, payload)
    try:
        fit = fit_params(
            completion, target_model(provider, provider_model), client=client, client_payload=payload,
            drop=drop_params, user_id=user_id, not_params=_NOT_FITTED, conversation_id=conversation_id,
        )
    except UnsupportedParams as e:
        raise TranslationRefused(
            400, f"{provider} model {provider_model} does not take {e}; remove them, or let the proxy drop "
            "them: drop_params is on unless the alias sets it false",
        ) from None
    completion = fit.completion
    messages = completion.pop("messages")
    _refuse_remote_media(messages, provider)
    stream = completion.get("stream") is True
    stream_options = completion.get("stream_options")
    include_usage = (
        client is ClientProtocol.OPENAI and isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    )
    if stream and provider not in ("anthropic", "gemini"):
        # OpenAI-format providers send usage in a stream only when asked; Anthropic clients
        # expect it in message_delta.
        completion["stream_options"] = {"include_usage": True}
    params = {k: v for k, v in completion.items() if k != "model" and k not in _LITELLM_ONLY and v is not None}
    mapped = {k: v for k, v in params.items() if k in _MAPPED_PARAMS}
    extra = {k: v for k, v in params.items() if k not in _MAPPED_PARAMS}
    headers: dict[str, str] = {}
    litellm_params: dict[str, Any] = {}
    try:
        optional = get_optional_params(
            model=provider_model, custom_llm_provider=provider, drop_params=drop_params, **mapped, **extra
        )
        body = _native_body(provider, provider_model, messages, dict(optional), litellm_params, headers)
        _refuse_an_empty_conversation(provider, body)
        encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    except TranslationRefused:
        raise
    except litellm.UnsupportedParamsError as e:
        raise TranslationRefused(400, _litellm_message(e)) from None
    except Exception as e:
        # LiteLLM's transforms assume a well-formed request and trip (TypeError, KeyError, its
        # BadRequestError) on anything else: the provider would have refused it too.
        logger.debug("memory-routing: LiteLLM could not translate a request", exc_info=True)
        raise TranslationRefused(
            400, f"the request cannot be translated for {provider}: {type(e).__name__}: {_litellm_message(e)}"
        ) from None
    if provider == "anthropic":
        headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    answer = AnswerTranslation(
        client=client,
        provider=provider,
        provider_model=provider_model,
        include_usage=include_usage,
        optional_params=dict(optional),
        litellm_params=litellm_params,
        tool_name_mapping=tool_name_mapping,
    )
    return TranslatedRequest(
        body=encoded,
        headers=tuple((name.lower(), str(value)) for name, value in headers.items()),
        answer=answer,
        dropped=fit.dropped,
        fitted=fit.fitted,
    )


def count_input_tokens(provider_model: str, payload: dict[str, Any]) -> int:
    """Anthropic's count_tokens for a model of another family, counted by LiteLLM's tokenizers
    (bundled with LiteLLM: nothing is downloaded)."""
    completion, _ = _completion_arguments(ClientProtocol.ANTHROPIC, None, {"max_tokens": 1, **payload})
    try:
        return int(litellm.token_counter(model=provider_model, messages=completion["messages"], tools=completion.get("tools")))
    except Exception as e:
        raise TranslationRefused(400, f"the tokens of this request cannot be counted: {_litellm_message(e)}") from None


def _completion_arguments(
    client: ClientProtocol, provider: str | None, payload: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The client's body as LiteLLM's OpenAI-shaped completion arguments, and the tool names
    the Anthropic adapter shortened."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise TranslationRefused(400, 'the request body needs a non-empty "messages" list of objects')
    if client is not ClientProtocol.ANTHROPIC:
        return dict(payload), {}
    try:
        completion, tool_name_mapping = LiteLLMAnthropicMessagesAdapter().translate_anthropic_to_openai(
            payload, custom_llm_provider=provider
        )
    except Exception as e:  # the adapter assumes a well-formed request: say what it tripped on
        raise TranslationRefused(400, f"the request cannot be translated: {type(e).__name__}: {_litellm_message(e)}") from None
    return dict(completion), tool_name_mapping


def _native_body(
    provider: str, model: str, messages: list, optional: dict, litellm_params: dict, headers: dict
) -> dict[str, Any]:
    config = ProviderConfigManager.get_provider_chat_config(model=model, provider=litellm.LlmProviders(provider))
    if config is None:
        raise TranslationRefused(400, f"LiteLLM has no chat transformation for {provider}")
    # As litellm.completion does before any provider transform (called directly here): OpenAI's
    # "developer" role becomes "system" where the target has no such role.
    messages = config.translate_developer_role_to_system_role(messages)
    if provider == "gemini":
        # Gemini names the model and the streaming mode in the URL, not in the body.
        optional.pop("stream", None)
        optional.pop("stream_options", None)
        return gemini_request_body(messages, model, optional, litellm_params)
    if provider != "anthropic":
        # Anthropic's adapter leaves thinking_blocks (often null) on assistant messages; an
        # OpenAI-format API refuses keys it does not know. LiteLLM's Mistral config strips
        # nulls for the same reason; signed thinking blocks mean nothing to another model.
        messages = [
            {k: v for k, v in strip_none_values_from_message(m).items() if k != "thinking_blocks"}
            if isinstance(m, dict) else m
            for m in messages
        ]
    body = dict(config.transform_request(model, messages, optional, litellm_params, headers))
    # LiteLLM leaves provider extras under extra_body for the OpenAI SDK to merge; no SDK here.
    extra_body = body.pop("extra_body", None)
    if isinstance(extra_body, dict):
        body.update(extra_body)
    return body


def _refuse_an_empty_conversation(provider: str, body: dict[str, Any]) -> None:
    """Refuse a translated conversation the provider refuses whatever the rest says.

    LiteLLM drops what has no equivalent (system-only turns, an assistant turn without content)
    and can leave nothing, or an assistant turn first, which Anthropic refuses. Said here in the
    client's terms rather than as the provider's 400 about a body the client never sent.
    """
    if provider == "gemini":
        return  # LiteLLM gives Gemini a user turn when none is left (the system text, or a blank one)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TranslationRefused(
            400, f"nothing to send to {provider}: the request has no user or assistant message with content"
        )
    first = messages[0]
    if provider == "anthropic" and isinstance(first, dict) and first.get("role") != "user":
        raise TranslationRefused(
            400, "anthropic needs the conversation to start with a user message; this one starts with "
            f"{first.get('role')!r} (after system messages)",
        )


def _refuse_remote_media(messages: list, provider: str) -> None:
    """LiteLLM downloads some image URLs while translating, blocking the proxy: refuse those."""
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, dict) or part.get("type") not in ("image_url", "file"):
                continue
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or url.startswith("data:"):
                continue
            if provider == "anthropic" and url.startswith("https://"):
                continue  # passed on as a URL source, which Anthropic fetches itself
            raise TranslationRefused(
                400,
                f"an image given by URL cannot be translated for {provider}: this proxy does not download "
                "images on a client's behalf; send it inline as a data: URL (base64)",
            )


# --- streams -------------------------------------------------------------------------------


class StreamTranslator:
    """mitmproxy's per-chunk stream callback for one translated answer: bytes in the
    provider's event format in, bytes in the client's out, at most one event held back.

    Between LiteLLM's provider parser and the client's writer, the finish reason and token
    usage are held to the end, as LiteLLM's CustomStreamWrapper does: Gemini marks every
    chunk "stop", Anthropic splits usage over two events, OpenAI sends it after the finish.
    """

    def __init__(self, answer: AnswerTranslation) -> None:
        self.answer = answer
        self._decoder = SseDecoder()
        self._source = _source_for(answer)
        self._sink: _AnthropicEvents | _OpenAIChunks = (
            _AnthropicEvents(answer) if answer.client is ClientProtocol.ANTHROPIC else _OpenAIChunks(answer)
        )
        self._finish_reason: str | None = None
        self._prompt_tokens: int | None = None
        self._completion_tokens: int | None = None
        # The prompt cache's reads and writes and the reasoning tokens, handed on to the client
        # in its own names (Claude Code on GPT sees cache_read_input_tokens).
        self._cache_read_tokens: int | None = None
        self._cache_write_tokens: int | None = None
        self._reasoning_tokens: int | None = None
        self._closed = False

    @property
    def observer(self) -> Callable[[dict[str, Any]], None] | None:
        """Called with each event the client gets, as the dict it is encoded from: a reader of the
        answer (the memory) takes the events from here rather than decoding the stream again.
        It must not raise."""
        return self._sink.observer

    @observer.setter
    def observer(self, observer: Callable[[dict[str, Any]], None] | None) -> None:
        self._sink.observer = observer

    def __call__(self, chunk: bytes) -> list[bytes]:
        # A list, never b"": mitmproxy writes an empty bytes object as an empty HTTP/1 chunk,
        # which ends the client's chunked body.
        out = self._step(chunk)
        return [out] if out else []

    def _step(self, chunk: bytes) -> bytes:
        if self._closed:
            return b""
        try:
            if not chunk:  # mitmproxy's call at the end of the body
                return self._finish(self._decoder.close())
            return b"".join(self._translate(event) for event in self._decoder.feed(chunk))
        except TranslationRefused as e:
            return self._fail(e.status, e.message)
        except Exception as e:  # a LiteLLM parser that chokes on an event ends the stream cleanly
            logger.warning(f"memory-routing: translating {self.answer.provider}'s stream failed", exc_info=True)
            return self._fail(502, f"the proxy could not translate {self.answer.provider}'s stream: {_litellm_message(e)}")

    def _translate(self, event: SseEvent) -> bytes:
        if self._closed:
            return b""
        data = event.data.strip()
        if data == "[DONE]":
            return self._finish([])
        try:
            document = json.loads(data) if data else None
        except ValueError:
            document = None
        if not isinstance(document, dict):
            return b""  # a keep-alive or a comment: nothing to translate
        if event.event == "error" or document.get("type") == "error" or "error" in document:
            status = _stream_error_status(document)
            return self._fail(status, f"{self.answer.provider}: {_error_message_in(document, status)}")
        if self.answer.provider == "anthropic" and document.get("type") == "message_stop":
            return self._finish([])
        chunk = self._source(document)
        if chunk is None or not self._hold_finish_and_usage(chunk):
            return b""
        return self._sink.push(chunk)

    def _hold_finish_and_usage(self, chunk: ModelResponseStream) -> bool:
        """Take the finish reason and usage off ``chunk``; False when nothing else is left."""
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            # Running totals, or split over events (Anthropic: input first, output last).
            if usage.prompt_tokens:
                self._prompt_tokens = max(self._prompt_tokens or 0, usage.prompt_tokens)
            if usage.completion_tokens:
                self._completion_tokens = max(self._completion_tokens or 0, usage.completion_tokens)
            read, write, reasoning = _cache_and_reasoning(usage)
            self._cache_read_tokens = _larger(self._cache_read_tokens, read)
            self._cache_write_tokens = _larger(self._cache_write_tokens, write)
            self._reasoning_tokens = _larger(self._reasoning_tokens, reasoning)
            del chunk.usage
        has_content = False
        for choice in chunk.choices or ():
            if choice.finish_reason:
                self._finish_reason = choice.finish_reason
                choice.finish_reason = None
            delta = choice.delta
            if delta is not None and (
                delta.content or delta.tool_calls or getattr(delta, "reasoning_content", None)
                or getattr(delta, "thinking_blocks", None)
            ):
                has_content = True
        return has_content

    def _final_chunk(self) -> ModelResponseStream | None:
        if self._finish_reason is None:
            return None  # ended without saying why: the client sees the stream end as it is
        final: dict[str, Any] = {"choices": [{"index": 0, "delta": {}, "finish_reason": self._finish_reason}]}
        if self._prompt_tokens is not None or self._completion_tokens is not None:
            prompt, completion = self._prompt_tokens or 0, self._completion_tokens or 0
            usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                     "total_tokens": prompt + completion}
            # LiteLLM's names: its Anthropic writer turns them into the client's cache fields.
            if self._cache_read_tokens:
                usage["cache_read_input_tokens"] = self._cache_read_tokens
            if self._cache_write_tokens:
                usage["cache_creation_input_tokens"] = self._cache_write_tokens
            if self._reasoning_tokens:
                usage["completion_tokens_details"] = {"reasoning_tokens": self._reasoning_tokens}
            final["usage"] = usage
        return ModelResponseStream(**final)

    def _finish(self, trailing: list[SseEvent]) -> bytes:
        out = b"".join(self._translate(event) for event in trailing)
        if self._closed:
            return out
        self._closed = True
        final = self._final_chunk()
        if final is not None:
            out += self._sink.push(final)
        return out + self._sink.close()

    def _fail(self, status: int, message: str) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        return self._sink.error(status, message)


def _source_for(answer: AnswerTranslation):
    """A function from one provider event (parsed JSON) to a LiteLLM ModelResponseStream."""
    if answer.provider == "anthropic":
        return anthropic_chunk_parser(_reverse_tool_map(answer.litellm_params))
    if answer.provider == "gemini":
        return gemini_chunk_parser(answer.optional_params)
    return lambda document: ModelResponseStream(**document)


class _AnthropicEvents:
    """Anthropic's server-sent events from LiteLLM's ModelResponseStream objects."""

    def __init__(self, answer: AnswerTranslation) -> None:
        self._stream = SteppedAnthropicStream(answer.provider_model, answer.tool_name_mapping)
        self.observer: Callable[[dict[str, Any]], None] | None = None

    def push(self, chunk: ModelResponseStream) -> bytes:
        return self._events(self._stream.push(chunk))

    def close(self) -> bytes:
        return self._events(self._stream.close())

    def error(self, status: int, message: str) -> bytes:
        body = json.loads(error_body(ClientProtocol.ANTHROPIC, status, message))
        return _sse("error", body)

    def _events(self, events: list[dict]) -> bytes:
        out = []
        for event in events:
            plain = _plain(event)
            if self.observer is not None:
                self.observer(plain)
            out.append(_sse(str(event.get("type", "message")), plain))
        return b"".join(out)


class _OpenAIChunks:
    """OpenAI chat.completion.chunk events from LiteLLM's ModelResponseStream objects."""

    def __init__(self, answer: AnswerTranslation) -> None:
        self.answer = answer
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self._role_sent = False
        self._usage: dict[str, int | dict[str, int]] | None = None
        self.observer: Callable[[dict[str, Any]], None] | None = None

    def push(self, chunk: ModelResponseStream) -> bytes:
        usage = getattr(chunk, "usage", None)
        if usage is not None:  # only on the final chunk (see StreamTranslator)
            self._usage = {
                "prompt_tokens": usage.prompt_tokens or 0,
                "completion_tokens": usage.completion_tokens or 0,
                "total_tokens": usage.total_tokens or 0,
            }
            # OpenAI's own names for the cache reads and the reasoning; a cache write has none
            # (LiteLLM's whole answers name it cache_creation_input_tokens, as here).
            read, write, reasoning = _cache_and_reasoning(usage)
            if read:
                self._usage["prompt_tokens_details"] = {"cached_tokens": read}
            if write:
                self._usage["cache_creation_input_tokens"] = write
            if reasoning:
                self._usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        out: list[bytes] = []
        for choice in chunk.choices or ():
            delta = _openai_delta(choice.delta)
            if not self._role_sent:
                delta = {"role": "assistant", **delta}
            finish = choice.finish_reason or None
            if not delta and finish is None:
                continue
            self._role_sent = True
            event = self._chunk([{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}])
            if self.observer is not None:
                self.observer(event)
            out.append(_sse(None, event))
        return b"".join(out)

    def close(self) -> bytes:
        out = b""
        if self.answer.include_usage and self._usage is not None:
            out += _sse(None, self._chunk([]) | {"usage": self._usage})
        return out + b"data: [DONE]\n\n"

    def error(self, status: int, message: str) -> bytes:
        return _sse(None, json.loads(error_body(ClientProtocol.OPENAI, status, message)))

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.answer.provider_model,
            "choices": choices,
        }


def _cache_and_reasoning(usage: Any) -> tuple[int | None, int | None, int | None]:
    """(cache reads, cache writes, reasoning tokens) of a LiteLLM Usage, whichever names its
    provider parser filled (Anthropic's: cache_*_input_tokens; OpenAI's and Gemini's: the details)."""
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    completion_details = getattr(usage, "completion_tokens_details", None)
    read = getattr(usage, "cache_read_input_tokens", None) or getattr(prompt_details, "cached_tokens", None)
    write = getattr(usage, "cache_creation_input_tokens", None) or getattr(prompt_details, "cache_creation_tokens", None)
    reasoning = getattr(completion_details, "reasoning_tokens", None)
    return (read if isinstance(read, int) else None, write if isinstance(write, int) else None,
            reasoning if isinstance(reasoning, int) else None)


def _larger(held: int | None, new: int | None) -> int | None:
    """Counts arrive as running totals or split over events: the largest seen is the call's."""
    if not new:
        return held
    return max(held or 0, new)


def _openai_delta(delta: Any) -> dict[str, Any]:
    if delta is None:
        return {}
    out: dict[str, Any] = {}
    if delta.content:
        out["content"] = delta.content
    if getattr(delta, "reasoning_content", None):
        out["reasoning_content"] = delta.reasoning_content
    if delta.tool_calls:
        calls = []
        for position, call in enumerate(delta.tool_calls):
            function = call.function
            entry: dict[str, Any] = {"index": call.index if call.index is not None else position}
            if call.id:
                entry["id"] = call.id
                entry["type"] = "function"
            entry["function"] = {
                key: value
                for key, value in (("name", function.name), ("arguments", function.arguments or ""))
                if value is not None
            }
            calls.append(entry)
        out["tool_calls"] = calls
    return out


def _openai_completion(response: ModelResponse) -> dict[str, Any]:
    document = response.model_dump(exclude_none=True)
    for choice in document.get("choices", []):
        message = choice.get("message", {})
        message.pop("provider_specific_fields", None)
        message.setdefault("content", None)  # required by the API, null beside tool calls
        for call in message.get("tool_calls") or ():
            call.pop("index", None)
            call.setdefault("type", "function")
        choice.setdefault("logprobs", None)
    return document


def _sse(event: str | None, data: Any) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def _plain(value: Any) -> Any:
    """LiteLLM's typed dicts and pydantic objects as plain JSON values."""
    return json.loads(json.dumps(value, default=lambda o: o.model_dump() if hasattr(o, "model_dump") else str(o)))


# --- errors --------------------------------------------------------------------------------


def provider_error_message(body: bytes, status: int) -> str:
    """The message inside any of the three error shapes, or the start of a non-JSON body."""
    try:
        document = json.loads(body)
    except ValueError:
        text = body[:300].decode("utf-8", "replace").strip()
        return f"HTTP {status}" + (f": {text}" if text else "")
    return _error_message_in(document, status)


def _error_message_in(document: Any, status: int) -> str:
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    return f"HTTP {status}"


def _stream_error_status(document: dict[str, Any]) -> int:
    error = document.get("error")
    if isinstance(error, dict):
        if isinstance(error.get("code"), int) and 400 <= error["code"] < 600:
            return error["code"]
        if error.get("type") in ("overloaded_error",):
            return 529
        if error.get("type") == "rate_limit_error":
            return 429
    return 502


def _litellm_message(error: Exception) -> str:
    message = getattr(error, "message", None) or str(error)
    # LiteLLM's advice is about its own proxy's config; docs/routing.md gives ours.
    message = message.split(" To drop these, set", 1)[0]
    return message.replace("litellm.BadRequestError: ", "").replace("litellm.UnsupportedParamsError: ", "").strip()


def _reverse_tool_map(litellm_params: dict[str, Any]) -> dict[str, str] | None:
    """Tool names AnthropicConfig rewrote for Anthropic's name rules, back to the client's."""
    candidate = litellm_params.get(ANTHROPIC_TOOL_NAME_REVERSE_MAP_KEY)
    return candidate if isinstance(candidate, dict) else None

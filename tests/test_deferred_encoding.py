"""tiktoken's cl100k table is built on first use, not while LiteLLM is imported; counting is unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import tiktoken

from memory_routing.llm.deferred_encoding import DeferredEncoding

ROOT = Path(__file__).resolve().parent.parent


def small_encoding_arguments() -> dict:
    return {
        "name": "bytes-only",
        "pat_str": r"\S+|\s+",
        "mergeable_ranks": {bytes([i]): i for i in range(256)} | {b"hi": 256},
        "special_tokens": {"<|end|>": 257},
    }


def test_a_deferred_encoding_builds_on_first_use_and_encodes_like_an_eager_one():
    calls = []

    def constructor() -> dict:
        calls.append(1)
        return small_encoding_arguments()

    deferred = DeferredEncoding("bytes-only", constructor)
    assert repr(deferred) == "<Encoding 'bytes-only'>" and not deferred.built and calls == []
    eager = tiktoken.Encoding(**small_encoding_arguments())
    assert deferred.encode("hi there") == eager.encode("hi there") == [256, 32, *b"there"]
    assert deferred.built and calls == [1]
    assert deferred.decode([256, 33]) == "hi!"
    assert deferred.encode("<|end|>", allowed_special="all") == [257]
    assert deferred.n_vocab == eager.n_vocab and deferred.special_tokens_set == {"<|end|>"}
    assert isinstance(deferred, tiktoken.Encoding)
    assert calls == [1]


def test_threads_that_use_it_first_at_once_build_it_once():
    calls = []
    arrived = threading.Semaphore(0)

    def constructor() -> dict:
        calls.append(1)
        for _ in range(4):  # every thread is about to read the encoding before the build ends
            assert arrived.acquire(timeout=10)
        return small_encoding_arguments()

    deferred = DeferredEncoding("bytes-only", constructor)
    results: list[list[int]] = []

    def use() -> None:
        arrived.release()
        results.append(deferred.encode("hi"))

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [[256]] * 4 and calls == [1]


def test_unknown_attributes_still_raise_attribute_error():
    deferred = DeferredEncoding("bytes-only", small_encoding_arguments)
    try:
        _ = deferred.no_such_attribute
    except AttributeError:
        pass
    else:
        raise AssertionError("expected AttributeError")
    assert not hasattr(deferred, "__no_such_dunder__")


# LiteLLM's import is process-wide (and takes seconds): checked once in a fresh interpreter.
_IN_FRESH_PROCESS = r"""
import json, os
import tiktoken, tiktoken.registry
from memory_routing.llm import load_litellm
from memory_routing.llm.deferred_encoding import DeferredEncoding
from memory_routing.llm import translation
from memory_routing.wire.protocol import ClientProtocol

litellm = load_litellm()
from litellm.litellm_core_utils import token_counter
registered = tiktoken.registry.ENCODINGS["cl100k_base"]
out = {"deferred": isinstance(registered, DeferredEncoding), "built_after_import": registered.built,
       "litellm_holds_it": token_counter.default_encoding is registered}
request = {"model": "m", "max_tokens": 32, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
for provider, model in (("openai", "gpt-4"), ("openai", "gpt-4o-mini"), ("gemini", "gemini-2.0-flash")):
    translation.translate_request(ClientProtocol.ANTHROPIC, provider, model, dict(request))
translation.translate_request(ClientProtocol.OPENAI, "anthropic", "claude-3-5-sonnet-20240620",
                              {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
out["built_after_translating"] = registered.built
payload = {"model": "m", "messages": [{"role": "user", "content": "What is the weather in Paris today? " * 20}]}
out["counts"] = {model: translation.count_input_tokens(model, payload) for model in ("gpt-4", "gemini-2.0-flash")}
out["built_after_counting"] = registered.built
# The same text through an eagerly built cl100k (read from LiteLLM's bundled copy, as before).
from tiktoken_ext.openai_public import ENCODING_CONSTRUCTORS
eager = tiktoken.Encoding(**ENCODING_CONSTRUCTORS["cl100k_base"]())
sentence = "What is the weather in Paris today?"
out["same_tokens"] = registered.encode(sentence) == eager.encode(sentence)
print(json.dumps(out))
"""


def test_litellm_import_defers_cl100k_and_token_counting_still_builds_and_uses_it():
    done = subprocess.run([sys.executable, "-c", _IN_FRESH_PROCESS], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["deferred"] and out["litellm_holds_it"]
    assert not out["built_after_import"]
    assert not out["built_after_translating"]  # translation never tokenizes
    assert out["built_after_counting"] and out["same_tokens"]
    # gpt-4's table is cl100k; Gemini models fall back to it in LiteLLM's token_counter.
    assert out["counts"]["gpt-4"] == out["counts"]["gemini-2.0-flash"]
    assert 150 < out["counts"]["gpt-4"] < 200

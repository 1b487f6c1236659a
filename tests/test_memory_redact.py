"""What is removed before a turn is stored: secrets, <private> text, our own recall block."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memory_routing.memory.redact import (
    FENCE_CLOSE, FENCE_OPEN, REDACTED, drop_private, prepare_text, redact_secrets, strip_recall_block)

SECRETS = [
    "sk-proj-Abcdefghijklmnop1234567890QRSTuvwx",
    "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWx-1234567890_abcdef",
    "sk-0123456789abcdefABCDEF0123",
    "AIzaSyA1234567890abcdefghijklmnopqrstuv",
    "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    "AKIAIOSFODNN7EXAMPLE",
    "xoxb-1234567890-abcdefghij",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "glpat-abcdefghij0123456789",
    "sk_live_abcdefghijklmnop0123",
]


@pytest.mark.parametrize("secret", SECRETS)
def test_key_shapes_are_redacted(secret: str) -> None:
    out = redact_secrets(f"my key is {secret} ok?")
    assert secret not in out and secret[8:20] not in out
    assert out.startswith("my key is ") and out.endswith(" ok?") and REDACTED in out


def test_bearer_and_headers() -> None:
    out = redact_secrets('curl -H "Authorization: Bearer abc123def456ghi" https://x')
    assert "abc123def456ghi" not in out and "Authorization: Bearer [REDACTED]" in out
    assert redact_secrets("the bearer of bad news; basic understanding") == "the bearer of bad news; basic understanding"


def test_pem_block() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabcdef==\n-----END RSA PRIVATE KEY-----"
    out = redact_secrets(f"here:\n{pem}\nthanks")
    assert "MIIEowIBAAKCAQEA7" not in out and out == f"here:\n{REDACTED}\nthanks"
    assert "MIIE" not in redact_secrets("-----BEGIN PRIVATE KEY-----\nMIIEcut off")


def test_assignments() -> None:
    text = ("export OPENAI_API_KEY=abc.def\nexport REGION=eu-west-1\nDB_PASSWORD: hunter2\n"
            "password=letmein, user=bob\n{\"api_key\": \"qwerty123\"}\nGITHUB_TOKEN='t0ken'\n")
    out = redact_secrets(text)
    for value in ("abc.def", "eu-west-1", "hunter2", "letmein", "qwerty123", "t0ken"):
        assert value not in out, value
    assert "export OPENAI_API_KEY=[REDACTED]" in out and "user=bob" in out
    assert '"api_key": "[REDACTED]"' in out and "GITHUB_TOKEN='[REDACTED]'" in out


def test_prose_survives() -> None:
    prose = "The author set max_tokens=100 and asked about tokens: 5 of them, a secret garden, sk-learn."
    assert redact_secrets(prose) == prose


def test_drop_private() -> None:
    assert drop_private("a <private>hidden</private> b") == "a  b"
    assert drop_private("a <PRIVATE>x\ny\nz</Private> b <private>q</private>c") == "a  b c"
    assert drop_private("keep\n<private>\nline1\nline2") == "keep\n"
    assert drop_private("no tags here") == "no tags here"


def test_strip_recall_block() -> None:
    block = f"{FENCE_OPEN}\n[2023-05-08] user: old thing\n{FENCE_CLOSE}\n"
    assert strip_recall_block(block + "What now?") == "What now?"
    assert strip_recall_block(f"before\n{block}after") == "before\nafter"
    assert strip_recall_block(f"{FENCE_OPEN}\n[2023] user: cut") == ""
    # Only a fence on its own line is ours; a mention in prose stays.
    mention = f"what does {FENCE_OPEN} mean?"
    assert strip_recall_block(mention) == mention


def test_prepare_text_applies_all() -> None:
    text = (f"{FENCE_OPEN}\n[2023-05-08] user: sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAA\n{FENCE_CLOSE}\n"
            "my token is ghp_0123456789abcdefghijABCDEFGHIJ012345 <private>diary</private> ok  ")
    assert prepare_text(text) == f"my token is {REDACTED}  ok"


@given(st.text())
def test_never_raises_and_is_idempotent(text: str) -> None:
    once = prepare_text(text)
    assert prepare_text(once) == once.strip()

"""What never reaches the memory store: secrets, text the user marked private, our own recall block."""

from __future__ import annotations

import re

# The recall block's fence. Fixed: the memory benchmark finds the injected block by these lines.
FENCE_OPEN = "<memory-routing-recall>"
FENCE_CLOSE = "</memory-routing-recall>"

REDACTED = "[REDACTED]"

# A closed block, or an unclosed one to the end of the text (a cut-off block still must not be stored).
_RECALL_BLOCK = re.compile(
    rf"^[ \t]*{re.escape(FENCE_OPEN)}[ \t]*$.*?(?:^[ \t]*{re.escape(FENCE_CLOSE)}[ \t]*(?:\n|\Z)|\Z)",
    re.MULTILINE | re.DOTALL)
_PRIVATE = re.compile(r"<private\b[^>]*>.*?(?:</private\s*>|\Z)", re.IGNORECASE | re.DOTALL)

# Whole tokens whose shape is a credential. Each pattern matches the secret only.
_TOKEN_SHAPES = [
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    r"-----BEGIN (?:CERTIFICATE|PGP PRIVATE KEY BLOCK|OPENSSH PRIVATE KEY|ENCRYPTED PRIVATE KEY)-----"
    r".*?(?:-----END [A-Z ]+-----|\Z)",
    r"\bsk-ant-[A-Za-z0-9_\-]{16,}",
    r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,}",
    r"\bAIza[0-9A-Za-z_\-]{30,}",
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",
    r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",  # JWT: header.payload.signature
    r"\bglpat-[A-Za-z0-9_\-]{20,}",
    r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe
    r"\bhf_[A-Za-z0-9]{30,}",
    r"\bnpm_[A-Za-z0-9]{30,}",
]
_TOKENS = re.compile("|".join(f"(?:{p})" for p in _TOKEN_SHAPES), re.DOTALL)
# Each shape above starts with one of these literals: a text holding none of them skips the
# pattern, which tries its fourteen alternatives at every position (~0.3 ms per 300 characters).
_TOKEN_LITERALS = ("-----BEGIN ", "sk-", "AIza", "github_pat_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "AKIA",
                   "ASIA", "xox", "eyJ", "glpat-", "k_live_", "k_test_", "hf_", "npm_")

# "Bearer xxx" / "Basic xxx" in a header or a curl line: keep the scheme, hide the credential.
# The credential must look like one (a digit, or long), so "basic understanding" stays prose.
_AUTH_SCHEME = re.compile(
    r"(?i)\b(bearer|basic)(\s+)((?=[A-Za-z0-9_\-.=:+/~]*\d)[A-Za-z0-9_\-.=:+/~]{8,}|[A-Za-z0-9_\-.=:+/~]{24,})")

# Assignments of secret-looking names: `export OPENAI_API_KEY=...`, `DB_PASSWORD: ...`, `password=...`,
# `"api_key": "..."`. Keeps the name (useful context), hides the value.
# The keyword ends the name or is followed by "_...": "max_tokens" and "author" are not secrets.
_SECRET_NAME = (r"[A-Za-z0-9_.\-]*(?:api[_\-]?key|secret|token|passw(?:or)?d|passwd|pwd|credentials?|"
                r"private[_\-]?key|access[_\-]?key|authorization)(?:_[A-Za-z0-9_\-]*)?")
_SECRET_ASSIGNMENT = re.compile(
    rf"""(?ix)
    (?P<name>["']?\b{_SECRET_NAME}["']?)
    (?P<sep>\s*[:=]\s*)
    (?P<value>"[^"\n]*"|'[^'\n]*'|[^\s,;"'}}\]]+)
    """)
# Every secret name above holds one of these (lower-cased); checked on ASCII text only, where
# the patterns' IGNORECASE is plain lower-casing (Unicode case folding also maps "K" and "ſ").
_ASSIGNMENT_LITERALS = ("key", "secret", "token", "passw", "pwd", "credential", "authorization")
# `export NAME=value` whatever the name: exported shell values are configuration, often secrets.
_EXPORT = re.compile(r"(?m)^(?P<head>\s*export\s+[A-Za-z_][A-Za-z0-9_]*=)(?P<value>\"[^\"\n]*\"|'[^'\n]*'|\S+)")


def redact_secrets(text: str) -> str:
    """`text` with credential-shaped tokens and secret-looking assignments replaced by [REDACTED]."""
    # The literal checks only skip patterns that cannot match; a replacement never adds a literal.
    lowered = text.lower() if text.isascii() else None
    if any(literal in text for literal in _TOKEN_LITERALS):
        text = _TOKENS.sub(REDACTED, text)
    if lowered is None or "bearer" in lowered or "basic" in lowered:
        text = _AUTH_SCHEME.sub(lambda m: m.group(1) + m.group(2) + REDACTED
                                if m.group(3) != REDACTED else m.group(0), text)
    text = _EXPORT.sub(lambda m: m.group("head") + _redact_value(m.group("value")), text)
    if lowered is not None and not any(literal in lowered for literal in _ASSIGNMENT_LITERALS):
        return text
    return _SECRET_ASSIGNMENT.sub(_redact_assignment, text)


def _redact_assignment(m: re.Match[str]) -> str:
    value = m.group("value")
    if value.lower() in ("bearer", "basic"):  # "Authorization: Bearer [REDACTED]" is done already
        return m.group(0)
    return m.group("name") + m.group("sep") + _redact_value(value)


def _redact_value(value: str) -> str:
    if REDACTED in value or not value:
        return value
    if value[0] in "\"'" and len(value) >= 2 and value[-1] == value[0]:
        return value[0] + REDACTED + value[0]
    return REDACTED


def drop_private(text: str) -> str:
    """`text` without anything between <private> and </private> (an unclosed tag drops to the end)."""
    return _PRIVATE.sub("", text)


def strip_recall_block(text: str) -> str:
    """`text` without the recall block this proxy injected (so memories never recall themselves)."""
    if FENCE_OPEN not in text:
        return text
    return _RECALL_BLOCK.sub("", text)


def prepare_text(text: str) -> str:
    """What is stored of a turn: no recall block, no private text, no secrets; trimmed."""
    return redact_secrets(drop_private(strip_recall_block(text))).strip()

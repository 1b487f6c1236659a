"""Recognise Cloudflare's own error answers (not the provider's) and say what they mean.

Pure logic. Cloudflare documents error 1200 as "cache connection limit": too many requests
queued at its edge for one origin. Challenges carry ``cf-mitigated: challenge``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_RETRY_AFTER_SECONDS = 10
_ERROR_CODE = re.compile(rb"error code:?\s*(\d{3,4})", re.IGNORECASE)
# Cloudflare's own answers (errors, rate limits, challenges) use only these statuses.
CLOUDFLARE_STATUSES = frozenset({403, 429, 503})


@dataclass(frozen=True)
class CloudflareRefusal:
    status: int  # what the client is told
    code: str | None  # Cloudflare's error code, e.g. "1200"
    challenge: bool
    retry_after: int

    def message(self, host: str) -> str:
        if self.challenge:
            what = "answered with a bot challenge (cf-mitigated: challenge), which an API client cannot solve"
        elif self.code == "1200":
            what = "refused the request with error 1200: too many requests queued at its edge for this origin"
        elif self.code:
            what = f"refused the request with error {self.code}"
        else:
            what = "refused the request with its own error page"
        return f"Cloudflare in front of {host} {what}; retry after {self.retry_after} s"


def is_cloudflare_error_head(status: int, headers: dict[str, str]) -> bool:
    """From the status and headers alone: may this be Cloudflare's page rather than the API's?"""
    if status not in CLOUDFLARE_STATUSES:
        return False
    if headers.get("cf-mitigated", "").lower() == "challenge":
        return True
    from_cloudflare = headers.get("server", "").lower() == "cloudflare" or "cf-ray" in headers
    content_type = headers.get("content-type", "").lower()
    return from_cloudflare and not content_type.startswith("application/json")


def classify_cloudflare_error(status: int, headers: dict[str, str], body: bytes) -> CloudflareRefusal | None:
    """``headers`` lower-cased. None when the answer is the API's own, to pass through as is."""
    if not is_cloudflare_error_head(status, headers):
        return None
    challenge = headers.get("cf-mitigated", "").lower() == "challenge"
    match = _ERROR_CODE.search(body[:4096])
    code = match.group(1).decode() if match else None
    retry_after = headers.get("retry-after", "")
    seconds = int(retry_after) if retry_after.isdigit() else DEFAULT_RETRY_AFTER_SECONDS
    client_status = 429 if code == "1200" or status == 429 else (403 if challenge else status)
    return CloudflareRefusal(client_status, code, challenge, seconds)

"""Classify a request's client into a memory user id.

Order: the explicit custom header, then the header patterns in config order, then the default.
Pure logic: headers come in as anything with a case-insensitive ``get_all`` (mitmproxy's
``Headers``) or ``get``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from memory_routing.errors import InvalidUserId as InvalidUserId  # re-exported
from memory_routing.config.schema import HeaderPattern, UserIdMappings
from memory_routing.wire.header_values import USER_ID_RULE, is_user_id

# Patterns are matched on a bounded prefix: a client cannot make classification slow by
# sending a megabyte User-Agent, and no real client identifies itself past this point.
MATCH_PREFIX_LENGTH = 1024


class HeaderLookup(Protocol):
    def get_all(self, name: str) -> list[str]: ...


@dataclass(frozen=True)
class ClientIdentity:
    """The routing decision for one request."""

    user_id: str
    matched_rule: HeaderPattern | None
    custom_header_present: bool
    is_default: bool

    def describe(self) -> str:
        if self.custom_header_present:
            return "custom header"
        if self.matched_rule is not None:
            return self.matched_rule.rule_name
        return "default"

    def as_dict(self) -> dict[str, object]:
        return {
            "user_id": self.user_id,
            "matched_pattern": self.matched_rule.as_dict() if self.matched_rule else None,
            "matched_rule": self.describe(),
            "custom_header_present": self.custom_header_present,
            "is_default": self.is_default,
        }


class Classifier:
    def __init__(self, mappings: UserIdMappings) -> None:
        self.mappings = mappings

    def classify(self, headers: HeaderLookup) -> ClientIdentity:
        """Raises InvalidUserId when the custom header is present but unusable."""
        custom_header = self.mappings.custom_header
        explicit = headers.get_all(custom_header)
        if explicit:
            return ClientIdentity(
                user_id=_validated_user_id(custom_header, explicit),
                matched_rule=None,
                custom_header_present=True,
                is_default=False,
            )
        for rule in self.mappings.header_patterns:
            for value in headers.get_all(rule.header):
                if rule.regex.search(value[:MATCH_PREFIX_LENGTH]):
                    return ClientIdentity(
                        user_id=rule.user_id,
                        matched_rule=rule,
                        custom_header_present=False,
                        is_default=False,
                    )
        return ClientIdentity(
            user_id=self.mappings.default_user_id,
            matched_rule=None,
            custom_header_present=False,
            is_default=True,
        )


def _validated_user_id(header: str, values: list[str]) -> str:
    distinct = {value.strip() for value in values}
    if len(distinct) > 1:
        raise InvalidUserId(header, "sent more than once with different values")
    (user_id,) = distinct
    if not is_user_id(user_id):
        # The value is not echoed back: it may hold control characters or be huge.
        raise InvalidUserId(header, USER_ID_RULE)
    return user_id

"""What may travel in a header: the memory user id alphabet and the characters no header value
may hold. Pure logic, the one definition of each (the config parser, the client classifier, the
planner and the request-limits guard all check with these).
"""

from __future__ import annotations

import re

# A memory user id ends up in the x-sm-user-id header and in the memory's storage keys, so only
# a conservative alphabet is allowed, whether it comes from the config or a client. Conversation
# ids go the same ways and use the same alphabet.
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
USER_ID_RULE = "use 1-128 characters from A-Z a-z 0-9 . _ : @ -"

# NUL, CR and LF end or split a header on some parsers: "x-a: 1\rx-sm-user-id: victim" is two.
_CONTROL_CHARACTERS = "\x00\r\n"
CONTROL_IN_VALUE = re.compile(f"[{_CONTROL_CHARACTERS}]")
# The same, for raw header bytes as mitmproxy's parser hands them over.
CONTROL_IN_RAW_VALUE = re.compile(f"[{_CONTROL_CHARACTERS}]".encode("ascii"))


def is_user_id(value: str) -> bool:
    return USER_ID_PATTERN.fullmatch(value) is not None

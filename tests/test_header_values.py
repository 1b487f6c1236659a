"""The one definition of the user id alphabet and of the characters no header value may hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from memory_routing.routing.planner import conversation_id_from
from memory_routing.wire.header_values import CONTROL_IN_RAW_VALUE, CONTROL_IN_VALUE, USER_ID_RULE, is_user_id

PACKAGE = Path(__file__).resolve().parent.parent / "memory_routing"


@pytest.mark.parametrize(
    "value, ok",
    [("alice", True), ("a.b_c:d@e-f", True), ("x" * 128, True), ("x" * 129, False), ("", False),
     ("a b", False), ("a\r\nb", False), ("ümlaut", False), ("a/b", False)],
)
def test_user_id_alphabet(value: str, ok: bool):
    assert is_user_id(value) is ok
    # Conversation ids use the same alphabet (surrounding blanks aside).
    assert (conversation_id_from({"x-memory-conversation-id": f" {value} "}.get) == value) is ok
    assert USER_ID_RULE == "use 1-128 characters from A-Z a-z 0-9 . _ : @ -"


@pytest.mark.parametrize("char", ["\x00", "\r", "\n"])
def test_control_characters_in_values(char: str):
    value = f"a{char}x-sm-user-id: victim"
    assert CONTROL_IN_VALUE.search(value) and CONTROL_IN_RAW_VALUE.search(value.encode())


@pytest.mark.parametrize("value", ["plain", "tab\tinside", "ümlaut", "\x7f"])
def test_other_values_pass(value: str):
    assert not CONTROL_IN_VALUE.search(value) and not CONTROL_IN_RAW_VALUE.search(value.encode())


def test_each_check_is_written_once():
    """The alphabet and the control-character set appear in header_values.py and nowhere else."""
    shapes = {
        "user id alphabet": re.compile(r"A-Za-z0-9\._:@-"),
        "header control characters": re.compile(r"\\x00\\r\\n|\\r\\n\\x00|\\x00\\n\\r|\"\\r\" not in"),
    }
    found = {
        (name, path.relative_to(PACKAGE).as_posix())
        for path in PACKAGE.rglob("*.py")
        for name, shape in shapes.items()
        if shape.search(path.read_text(encoding="utf-8"))
    }
    assert found == {("user id alphabet", "wire/header_values.py"), ("header control characters", "wire/header_values.py")}

"""memory/dates.py: the date labels and period keys windows carry, and the period a question names."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memory_routing.memory.dates import date_label, period_keys, question_period
from memory_routing.memory.windows import window_text


def at(year: int, month: int, day: int, hour: int = 12) -> float:
    return datetime(year, month, day, hour, tzinfo=UTC).timestamp()


NOW = at(2023, 5, 17)  # a Wednesday


def test_date_label_and_period_keys() -> None:
    assert date_label(at(2023, 5, 7)) == "7 May 2023"
    assert date_label(at(2024, 12, 31, 23)) == "31 December 2024"
    assert period_keys(at(2023, 5, 7)) == ("d20230507", "m202305", "y2023", "n05")
    assert window_text(at(2023, 5, 7), ["a", "b"]) == "7 May 2023\na\nb"


@pytest.mark.parametrize(("question", "keys"), [
    ("What did I do on 7 May 2023?", ("d20230507",)),
    ("what about the 7th of May, 2023", ("d20230507",)),
    ("Where was I on May 7, 2023?", ("d20230507",)),
    ("the meeting on 2023-05-07", ("d20230507",)),
    ("What happened in May 2023?", ("m202305",)),
    ("Which books did I read in 2022?", ("y2022",)),
    ("What did we talk about in May?", ("n05",)),
    ("What did I cook yesterday?", ("d20230516",)),
    ("anything today", ("d20230517",)),
    ("last month's trip", ("m202304",)),
    ("earlier this year", ("y2023",)),
    ("last year", ("y2022",)),
    ("the concert 2 days ago", ("d20230514", "d20230515", "d20230516")),
    ("last May", ("m202205",)),
    ("last March", ("m202303",)),
])
def test_question_period(question: str, keys: tuple[str, ...]) -> None:
    period = question_period(question, NOW)
    assert period is not None and period.keys == keys


def test_last_week_is_the_week_before_and_this_week_so_far() -> None:
    period = question_period("What did we cook last week?", NOW)
    assert period is not None
    assert period.keys[0] == "d20230508" and period.keys[-1] == "d20230517" and len(period.keys) == 10
    later = question_period("What did we cook last week?", NOW + 14 * 86400)
    assert later is not None and later.keys[0] == "d20230522"


@pytest.mark.parametrize("question", ["I may go hiking", "Where does my sister live?", "the 31 February 2023 thing",
                                      "call 555 1234"])
def test_no_period(question: str) -> None:
    assert question_period(question, NOW) is None

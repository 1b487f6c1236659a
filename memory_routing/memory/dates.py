"""Dates for recall (pure: no store): the readable date indexed with a window of turns, the
period keys a window carries, and the period a question names.

Every store indexes, beside each window of turns, its readable date ("7 May 2023", so that a
question naming "May 2023" matches it by its words) and its period keys: one for its day, its
month, its year and its month of any year. A question that names a date or a period ("in May",
"last week", "2023", "yesterday") is turned into the keys of that period, and the store then
searches only the windows carrying one of them. Relative periods are taken from `now`, the
time of the question, passed in explicitly.

All dates are UTC calendar dates: created_at is stored in epoch seconds, and the proxy has no
client time zone to go by.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
_MONTH_NUMBER = {name: n for n, name in enumerate(MONTHS, 1)} | {name[:3]: n for n, name in enumerate(MONTHS, 1)} \
    | {"sept": 9}
_MONTH = "|".join(sorted(_MONTH_NUMBER, key=len, reverse=True))
_YEAR = r"(?:19|20)\d\d"

# Longest forms first: "7 May 2023" must not be read as "May 2023".
_DAY_MONTH_YEAR = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH})\.?,?\s+({_YEAR})\b")
_MONTH_DAY_YEAR = re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+({_YEAR})\b")
_MONTH_YEAR = re.compile(rf"\b({_MONTH})\.?,?\s+(?:of\s+)?({_YEAR})\b")
_ISO_DAY = re.compile(rf"\b({_YEAR})-(\d\d)-(\d\d)\b")
# A month alone only after a word that makes it a time ("in May", "since June"): "may" is also a verb.
_MONTH_ALONE = re.compile(rf"\b(?:in|during|since|until|before|after|of|last|this|early|late|mid)\s+({_MONTH})\b")
_YEAR_ALONE = re.compile(rf"\b(?:in|during|since|of|year)\s+({_YEAR})\b|\b({_YEAR})\b")
_RELATIVE = re.compile(r"\b(yesterday|today|tonight|this morning|last night|last week|this week|past week"
                       r"|last month|this month|past month|last year|this year|last weekend|this weekend"
                       r"|(\d+|a|one|two|three|four|five|six) (day|week|month)s? ago)\b")
_SMALL = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def _utc_day(at: float) -> date:
    return datetime.fromtimestamp(at, UTC).date()


def date_label(created_at: float) -> str:
    """The readable date indexed with a window: "7 May 2023" (which also holds "May 2023" and "2023")."""
    day = _utc_day(created_at)
    return f"{day.day} {MONTHS[day.month - 1].capitalize()} {day.year}"


def day_key(day: date) -> str:
    return f"d{day.year:04d}{day.month:02d}{day.day:02d}"


def month_key(year: int, month: int) -> str:
    return f"m{year:04d}{month:02d}"


def year_key(year: int) -> str:
    return f"y{year:04d}"


def any_year_month_key(month: int) -> str:
    return f"n{month:02d}"


def period_keys(created_at: float) -> tuple[str, ...]:
    """The period keys a window starting at `created_at` carries: its day, month, year and month
    of any year, e.g. ("d20230507", "m202305", "y2023", "n05"). Words of [a-z0-9] only, so a
    store can keep them as index tokens (FTS5, tsvector) or as a plain array."""
    day = _utc_day(created_at)
    return day_key(day), month_key(day.year, day.month), year_key(day.year), any_year_month_key(day.month)


@dataclass(frozen=True, slots=True)
class Period:
    """A period a question names: a window matches it when it carries any of `keys`."""

    phrase: str  # the words of the question that name it (for tests and logs; never logged with the text)
    keys: tuple[str, ...]


def _days(first: date, last: date) -> tuple[str, ...]:
    return tuple(day_key(first + timedelta(days=n)) for n in range((last - first).days + 1))


def _month_before(day: date, months: int) -> tuple[int, int]:
    index = day.year * 12 + day.month - 1 - months
    return index // 12, index % 12 + 1


def question_period(question: str, now: float) -> Period | None:
    """The period `question` names, or None. Absolute dates win over relative ones; relative
    periods ("yesterday", "last week", "3 days ago") are counted back from `now` (epoch seconds).

    "last week" is the seven days before this one (Monday to Sunday), plus the days of this week
    so far: people say it of anything from a few days to two weeks back.
    """
    text = question.lower()
    if m := _DAY_MONTH_YEAR.search(text):
        return _day_period(m.group(0), int(m.group(3)), _MONTH_NUMBER[m.group(2)], int(m.group(1)))
    if m := _MONTH_DAY_YEAR.search(text):
        return _day_period(m.group(0), int(m.group(3)), _MONTH_NUMBER[m.group(1)], int(m.group(2)))
    if m := _ISO_DAY.search(text):
        return _day_period(m.group(0), int(m.group(1)), int(m.group(2)), int(m.group(3)))
    if m := _MONTH_YEAR.search(text):
        return Period(m.group(0), (month_key(int(m.group(2)), _MONTH_NUMBER[m.group(1)]),))
    today = _utc_day(now)
    if m := _RELATIVE.search(text):
        return _relative_period(m, today)
    if m := _MONTH_ALONE.search(text):
        month = _MONTH_NUMBER[m.group(1)]
        if m.group(0).startswith("last "):
            year = today.year if month < today.month else today.year - 1
            return Period(m.group(0), (month_key(year, month),))
        if m.group(0).startswith("this "):
            return Period(m.group(0), (month_key(today.year, month),))
        return Period(m.group(0), (any_year_month_key(month),))
    if m := _YEAR_ALONE.search(text):
        return Period(m.group(0), (year_key(int(m.group(1) or m.group(2))),))
    return None


def _day_period(phrase: str, year: int, month: int, day: int) -> Period | None:
    try:
        return Period(phrase, (day_key(date(year, month, day)),))
    except ValueError:
        return None  # "31 February 2023": no such day, so no period


def _relative_period(m: re.Match[str], today: date) -> Period:
    phrase = m.group(1)
    if m.group(2):
        count = int(m.group(2)) if m.group(2).isdigit() else _SMALL[m.group(2)]
        unit = m.group(3)
        if unit == "day":
            # "3 days ago" is rarely exact: the day before and after count too.
            center = today - timedelta(days=count)
            return Period(phrase, _days(center - timedelta(days=1), center + timedelta(days=1)))
        if unit == "week":
            center = today - timedelta(weeks=count)
            return Period(phrase, _days(center - timedelta(days=6), center + timedelta(days=6)))
        year, month = _month_before(today, count)
        return Period(phrase, (month_key(year, month),))
    if phrase in ("yesterday", "last night"):
        return Period(phrase, _days(today - timedelta(days=1), today - timedelta(days=1)))
    if phrase in ("today", "tonight", "this morning"):
        return Period(phrase, (day_key(today),))
    monday = today - timedelta(days=today.weekday())
    if phrase in ("last week", "past week"):
        return Period(phrase, _days(monday - timedelta(days=7), today))
    if phrase == "this week":
        return Period(phrase, _days(monday, today))
    if phrase == "last weekend":
        saturday = monday - timedelta(days=2)
        return Period(phrase, _days(saturday, saturday + timedelta(days=1)))
    if phrase == "this weekend":
        saturday = monday + timedelta(days=5)
        return Period(phrase, _days(min(saturday, today), min(saturday + timedelta(days=1), today)))
    if phrase in ("last month", "past month"):
        year, month = _month_before(today, 1)
        return Period(phrase, (month_key(year, month),))
    if phrase == "this month":
        return Period(phrase, (month_key(today.year, today.month),))
    if phrase == "last year":
        return Period(phrase, (year_key(today.year - 1),))
    return Period(phrase, (year_key(today.year),))  # "this year"

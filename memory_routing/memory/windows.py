"""Windows: runs of consecutive turns of a conversation, indexed beside the single turns (pure).

A question's words are often spread over a few turns ("Where did you go?" / "Lisbon, with my
sister"): a window of consecutive turns holds them together, so the index finds it where no
single turn matches well. Each store keeps, for every turn, the window of up to WINDOW_TURNS
turns that ends with it (at least two turns: a one-turn window is the turn itself), with the
readable date of its first turn (memory/dates.py) as its first line, so a question naming
"May 2023" matches windows of that month by their words.
"""

from __future__ import annotations

from collections.abc import Sequence

from .dates import date_label

WINDOW_TURNS = 3
MIN_WINDOW_TURNS = 2


def window_text(created_at: float, texts: Sequence[str]) -> str:
    """What a window's index holds: the readable date of its first turn, then its turns' texts."""
    return "\n".join([date_label(created_at), *texts])

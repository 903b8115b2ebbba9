"""The one rule for showing text that came from elsewhere (keyless_m2m/_text.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keyless_m2m._text import printable


def test_control_characters_become_question_marks() -> None:
    assert printable("ok\r\nforged: line\x1b[2J\x00") == "ok??forged: line?[2J?"


def test_a_long_text_is_cut_and_says_so() -> None:
    assert printable("a" * 10, 4) == "aaaa..."
    assert printable("a" * 4, 4) == "aaaa"
    assert printable("a" * 500) == "a" * 500  # no limit: not cut


@given(st.text(max_size=300), st.none() | st.integers(0, 200))
def test_the_result_is_always_one_printable_line(text: str, limit: int | None) -> None:
    shown = printable(text, limit)
    assert shown.isprintable()
    if limit is None or len(text) <= limit:
        assert len(shown) == len(text)  # one character for one character
    else:
        assert len(shown) == limit + 3 and shown.endswith("...")

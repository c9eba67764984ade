"""The events reference page matches the event types."""

from pathlib import Path

from libs.events.reference import render
from libs.events.types import EVENT_TYPES

PAGE = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def test_events_page_is_current() -> None:
    assert PAGE.read_text() == render(), (
        "docs/events.md is out of date: run "
        "`python -m libs.events.reference > docs/events.md`"
    )


def test_events_page_names_every_type() -> None:
    text = PAGE.read_text()
    for event_type in EVENT_TYPES:
        assert f"### `{event_type.__struct_config__.tag}`" in text

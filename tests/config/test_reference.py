"""The configuration page matches the configuration model."""

from pathlib import Path

from libs.config.reference import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_page_is_current() -> None:
    assert PAGE.read_text() == render(), (
        "docs/configuration.md is out of date: run "
        "`python -m libs.config.reference > docs/configuration.md`"
    )


def test_every_key_has_a_meaning() -> None:
    rows = [line for line in render().splitlines() if line.startswith("| `")]
    missing = [
        row.split("|")[1].strip() for row in rows if not row.split("|")[4].strip()
    ]
    assert missing == []

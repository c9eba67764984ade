"""docs/benchmarks.md: the page that `python -m bench` writes."""

from pathlib import Path

from .common import Result


def _section(name: str) -> str:
    """Return a hand-written section of the page, kept beside this module."""
    return (Path(__file__).parent / name).read_text()


def write_page(
    path: Path,
    results: list[Result],
    rows: list[str],
    facts: list[str],
    profile: list[str],
    preset: str,
    seconds: float,
) -> None:
    """Write the benchmarks page from one run's results."""
    parts = [_section("intro.md")]
    parts.append(
        f"## Results\n\nSizes: `{preset}` preset; the whole run took "
        f"{seconds:.0f} s. Machine:\n\n" + "\n".join(facts) + "\n"
    )
    parts.append("\n".join(rows) + "\n")
    parts.append(
        "![each repetition over its floor](benchmarks/ratios.png)\n\n"
        "![figures with an absolute target](benchmarks/absolute.png)\n"
    )
    notes = [f"- {result.name}: {note}" for result in results for note in result.notes]
    if notes:
        parts.append("Details of the same run:\n\n" + "\n".join(notes) + "\n")
    parts.append(_section("method.md"))
    parts.append(_section("analysis.md"))
    if profile:
        parts.append(
            "## Profile of the one-step job\n\n"
            "pyinstrument, sampling every 0.5 ms over 10 one-step jobs with the\n"
            "whole stack in one process. Self time, share of the whole. Entries\n"
            "outside a package directory (the event loop's `select`, where the\n"
            "process waits for Docker and NATS) are left out:\n\n"
            "```\n" + "\n".join(profile) + "\n```\n"
        )
    parts.append(_section("other_runners.md"))
    path.write_text("\n".join(parts))

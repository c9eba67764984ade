"""Render `docs/events.md`, the reference of the public event interface.

The tables come from the msgspec types, so the page cannot drift from the code,
and the hand-written part comes from `events_intro.md` beside this module;
a test checks that the committed page equals what this renders. Regenerate
with `python -m libs.events.reference > docs/events.md`.
"""

from importlib import resources

import msgspec

from .types import EVENT_TYPES, Event, LogChunk

INTRODUCTION_FILE = "events_intro.md"


def _type_name(annotation: object) -> str:
    text = str(annotation)
    for prefix in ("typing.", "libs.events.types.", "<class '", "'>"):
        text = text.replace(prefix, "")
    return text


def _default(field: msgspec.structs.FieldInfo) -> str:
    if field.required:
        return "required"
    if field.default is msgspec.NODEFAULT:
        return "empty"
    return f"`{field.default!r}`"


def _table(struct: type[msgspec.Struct], skip: set[str]) -> list[str]:
    lines = ["| field | type | default |", "| --- | --- | --- |"]
    for field in msgspec.structs.fields(struct):
        if field.name in skip:
            continue
        lines.append(
            f"| `{field.name}` | `{_type_name(field.type)}` | {_default(field)} |"
        )
    return lines


def render() -> str:
    """Return the whole reference page as Markdown."""
    base = {field.name for field in msgspec.structs.fields(Event)}
    intro = resources.files(__package__).joinpath(INTRODUCTION_FILE).read_text()
    parts = [intro]
    for event_type in EVENT_TYPES:
        tag = event_type.__struct_config__.tag
        doc = (event_type.__doc__ or "").strip()
        parts.append(f"### `{tag}`\n\n{doc}\n")
        parts.append("\n".join(_table(event_type, base)) + "\n")
    parts.append("## Log chunks\n\n" + (LogChunk.__doc__ or "").strip() + "\n")
    parts.append("\n".join(_table(LogChunk, set())) + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")

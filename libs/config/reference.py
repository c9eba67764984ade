"""Render `docs/configuration.md` from the configuration model.

Each key's row comes from the model: its environment variable, its default,
and the docstring written under the field in `model.py`. A test checks that
the committed page equals what this renders. Regenerate with
`python -m libs.config.reference > docs/configuration.md`.
"""

import ast
import inspect
import itertools
from importlib import resources
from typing import Any

import msgspec

from . import model
from .loader import _FILE_ONLY, ENV_PREFIX

INTRODUCTION_FILE = "configuration_intro.md"
_COMPUTED_DEFAULTS = {
    "data_dir": "`$XDG_DATA_HOME/stasis` or `~/.local/share/stasis`",
    "executor.id": "`<hostname>-<pid>`",
}


def _field_docs() -> dict[tuple[str, str], str]:
    """Return {(class name, field name): docstring} from the model's source."""
    tree = ast.parse(inspect.getsource(model))
    docs = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for current, following in itertools.pairwise(body):
            if not (
                isinstance(current, ast.AnnAssign)
                and isinstance(current.target, ast.Name)
            ):
                continue
            if isinstance(following, ast.Expr) and isinstance(
                following.value, ast.Constant
            ):
                text = " ".join(str(following.value.value).split())
                docs[(node.name, current.target.id)] = text
    return docs


def _default(struct_type: type, field: msgspec.structs.FieldInfo) -> str:
    if field.default_factory is not msgspec.NODEFAULT:
        value: Any = field.default_factory()
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def _rows(
    struct_type: type, docs: dict[tuple[str, str], str], prefix: str = ""
) -> list[str]:
    rows = []
    for field in msgspec.structs.fields(struct_type):
        key = prefix + field.name
        if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            rows.extend(_rows(field.type, docs, key + "."))
            continue
        default = _COMPUTED_DEFAULTS.get(key) or _default(struct_type, field)
        variable = (
            "file only"
            if key in _FILE_ONLY
            else f"`{ENV_PREFIX}{key.replace('.', '_').upper()}`"
        )
        meaning = docs.get((struct_type.__name__, field.name), "")
        rows.append(f"| `{key}` | {variable} | {default} | {meaning} |")
    return rows


def render() -> str:
    """Return the whole configuration page as Markdown."""
    intro = resources.files(__package__).joinpath(INTRODUCTION_FILE).read_text()
    table = ["| key | variable | default | meaning |", "| --- | --- | --- | --- |"]
    table += _rows(model.Config, _field_docs())
    return intro + "\n".join(table) + "\n"


if __name__ == "__main__":
    print(render(), end="")

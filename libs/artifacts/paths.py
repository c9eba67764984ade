"""Lexical checks of archive member names and symbolic link targets.

The tar collector and the archive extractor both decide with these functions
whether a name or a link stays inside its root, so both apply the same rules.
"""

from collections.abc import Mapping

# Linux stops following symbolic links after 40 hops (MAXSYMLINKS in namei.h).
MAX_LINK_HOPS = 40


def split_relative(name: str) -> list[str] | None:
    """Return the segments of a relative member name, or None for an unsafe one.

    A name is unsafe when it is absolute, contains NUL or has a `..` segment.
    Empty and `.` segments are dropped, so `./a//b/` gives `["a", "b"]`.
    """
    if "\0" in name or name.startswith("/"):
        return None
    segments = [s for s in name.split("/") if s not in ("", ".")]
    if ".." in segments:
        return None
    return segments


def resolve_link(link_path: str, target: str, links: Mapping[str, str]) -> str | None:
    """Resolve the target of the symbolic link at `link_path` inside a root.

    `links` maps every link path in the tree to its target, so a chain of links is
    followed the way the kernel would follow it. Returns the resolved path relative
    to the root (`""` for the root itself), or None when the target is absolute,
    when resolution climbs above the root, or after `MAX_LINK_HOPS` links.
    """
    if target.startswith("/") or "\0" in target:
        return None
    directory = link_path.split("/")[:-1]
    pending = target.split("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not directory:
                return None
            directory.pop()
            continue
        candidate = "/".join([*directory, part])
        next_target = links.get(candidate)
        if next_target is None:
            directory.append(part)
            continue
        hops += 1
        if hops > MAX_LINK_HOPS or next_target.startswith("/"):
            return None
        # A link's target is relative to the directory that contains the link,
        # which is `directory` here, so only the pending parts change.
        pending = next_target.split("/") + pending
    return "/".join(directory)

"""Extracting tar and zip archives without writing outside the destination.

`safe_extract` checks every member before it writes anything, so an unsafe member
in the archive leaves `dest` untouched. It raises `UnsafeArchive` naming the
member for:
- names that are absolute, contain NUL or have a `..` segment.
- members written through a symbolic link of the same archive.
- symbolic links that are absolute or resolve outside `dest`, also through other
  links of the archive.
- hard links to anything but an earlier regular file of the archive.
- device files, FIFOs and other special files.
While writing it also checks each resolved path on disk, so a symbolic link that
was already in `dest` cannot redirect a write either. That check raises only after
the earlier members were written.
"""

import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from .errors import InvalidArchive, UnsafeArchive
from .paths import resolve_link, split_relative

_COPY_CHUNK = 1024 * 1024
# PATH_MAX on Linux, so a longer zip "link target" cannot be a real link.
_MAX_LINK_TARGET = 4096
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True)
class _Member:
    name: str
    """Normalized relative path."""
    kind: str
    """One of "file", "directory", "symlink" and "hardlink"."""
    mode: int
    size: int
    link_target: str
    open_content: Callable[[], IO[bytes]] | None


def safe_extract(
    archive_path: str, dest: str, *, max_bytes: int | None = None
) -> list[str]:
    """Extract a tar (plain or compressed) or zip archive into `dest`.

    Returns the extracted paths relative to `dest`, in archive order. File and
    directory modes keep their permission bits without setuid, setgid or sticky.
    `max_bytes` limits the sum of the declared file sizes. Raises `UnsafeArchive`
    for an unsafe member and `InvalidArchive` for a file that is neither format.
    """
    os.makedirs(dest, exist_ok=True)
    with _open_members(archive_path) as members:
        _check_members(members, max_bytes)
        root = os.path.realpath(dest)
        for member in members:
            _extract_member(member, root)
        _apply_directory_modes(members, root)
    return [member.name for member in members]


@contextmanager
def _open_members(archive_path: str) -> Iterator[list[_Member]]:
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as archive:
            yield [_zip_member(archive, info) for info in archive.infolist()]
        return
    with _open_tar(archive_path) as tar:
        yield [_tar_member(tar, info) for info in tar.getmembers()]


def _open_tar(archive_path: str) -> tarfile.TarFile:
    try:
        return tarfile.open(archive_path, mode="r:*")
    except tarfile.TarError as exc:
        raise InvalidArchive(
            f"{archive_path!r} is neither a zip nor a readable tar archive: {exc}"
        ) from exc


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    # ZipInfo cuts names at the first NUL, but orig_filename keeps the whole name.
    name = _normalize_name(info.orig_filename)
    unix_mode = info.external_attr >> 16
    file_type = stat.S_IFMT(unix_mode)
    if info.is_dir() or file_type == stat.S_IFDIR:
        return _Member(name, "directory", unix_mode & 0o777 or 0o755, 0, "", None)
    if file_type == stat.S_IFLNK:
        with archive.open(info) as content:
            raw_target = content.read(_MAX_LINK_TARGET + 1)
        if len(raw_target) > _MAX_LINK_TARGET:
            raise UnsafeArchive(info.orig_filename, "its link target is too long")
        target = raw_target.decode("utf-8", errors="surrogateescape")
        return _Member(name, "symlink", 0o777, 0, target, None)
    if file_type not in (0, stat.S_IFREG):
        raise UnsafeArchive(info.orig_filename, "special files are not extracted")
    mode = unix_mode & 0o777 or 0o644
    return _Member(name, "file", mode, info.file_size, "", lambda: archive.open(info))


def _tar_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> _Member:
    name = _normalize_name(info.name)
    mode = info.mode & 0o777
    if info.isdir():
        return _Member(name, "directory", mode, 0, "", None)
    if info.issym():
        return _Member(name, "symlink", 0o777, 0, info.linkname, None)
    if info.islnk():
        return _Member(name, "hardlink", mode, 0, info.linkname, None)
    if not info.isreg():
        raise UnsafeArchive(info.name, "device files and FIFOs are not extracted")
    return _Member(name, "file", mode, info.size, "", lambda: _tar_content(tar, info))


def _tar_content(tar: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    content = tar.extractfile(info)
    if content is None:
        raise InvalidArchive(f"tar member {info.name!r} has no readable content")
    return content


def _normalize_name(name: str) -> str:
    segments = split_relative(name)
    if segments is None:
        raise UnsafeArchive(name, "absolute names, '..' and NUL are not allowed")
    if not segments:
        raise UnsafeArchive(name, "the name is empty")
    return "/".join(segments)


def _check_members(members: list[_Member], max_bytes: int | None) -> None:
    links = {m.name: m.link_target for m in members if m.kind == "symlink"}
    files: set[str] = set()
    total = 0
    for member in members:
        parents = member.name.split("/")[:-1]
        for depth in range(1, len(parents) + 1):
            parent = "/".join(parents[:depth])
            if parent in links:
                raise UnsafeArchive(
                    member.name, f"it would be written through the link {parent!r}"
                )
        if (
            member.kind == "symlink"
            and resolve_link(member.name, member.link_target, links) is None
        ):
            raise UnsafeArchive(
                member.name, f"its link target {member.link_target!r} leaves dest"
            )
        if member.kind == "hardlink" and _hard_link_source(member) not in files:
            raise UnsafeArchive(
                member.name,
                f"hard link target {member.link_target!r} is not an earlier file",
            )
        if member.kind == "file":
            files.add(member.name)
            total += member.size
            if max_bytes is not None and total > max_bytes:
                raise UnsafeArchive(
                    member.name, f"files add up to more than {max_bytes} bytes"
                )


def _hard_link_source(member: _Member) -> str | None:
    segments = split_relative(member.link_target)
    return "/".join(segments) if segments else None


def _extract_member(member: _Member, root: str) -> None:
    path = _checked_path(root, member.name)
    if member.kind == "directory":
        if not os.path.isdir(path) or os.path.islink(path):
            _remove_existing(path, member.name)
            os.mkdir(path, 0o700)
        return
    _remove_existing(path, member.name)
    if member.kind == "symlink":
        os.symlink(member.link_target, path)
    elif member.kind == "hardlink":
        source = _checked_path(root, _hard_link_source(member) or "")
        shutil.copyfile(source, path, follow_symlinks=False)
        os.chmod(path, member.mode)
    else:
        _write_file(member, path)


def _write_file(member: _Member, path: str) -> None:
    if member.open_content is None:
        raise InvalidArchive(f"archive member {member.name!r} has no content")
    fd = os.open(path, _OPEN_FLAGS, 0o600)
    with member.open_content() as source, os.fdopen(fd, "wb") as target:
        shutil.copyfileobj(source, target, _COPY_CHUNK)
        os.fchmod(target.fileno(), member.mode)


def _checked_path(root: str, name: str) -> str:
    """Return the on-disk path for `name`, checking that its parent stays in root."""
    path = os.path.join(root, name)
    parent = os.path.realpath(os.path.dirname(path))
    if parent != root and not parent.startswith(root + os.sep):
        raise UnsafeArchive(name, f"its parent directory resolves to {parent!r}")
    os.makedirs(parent, exist_ok=True)
    return path


def _remove_existing(path: str, name: str) -> None:
    if not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        raise UnsafeArchive(name, "it would replace an existing directory")
    os.unlink(path)


def _apply_directory_modes(members: list[_Member], root: str) -> None:
    # Directories stay writable until every member is in place. Deepest first, so
    # a read-only parent is set after its children.
    directories = [m for m in members if m.kind == "directory"]
    for member in sorted(directories, key=lambda m: m.name, reverse=True):
        os.chmod(os.path.join(root, member.name), member.mode)

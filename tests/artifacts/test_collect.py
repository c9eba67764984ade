"""Collecting artifacts from a Docker-style workspace tar and round-tripping them."""

import hashlib
import io
import os
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from libs.artifacts import (
    ArchiveFormat,
    ArtifactTooLarge,
    Collected,
    InvalidArchive,
    InvalidPattern,
    collect_from_tar,
    safe_extract,
)
from tests.artifacts.workspace_tar import (
    Member,
    build_tar,
    directory,
    stream_only,
    symlink,
)

UNICODE_NAME = "dist/ünïcødé-日本.txt"
NAMED_FILES = {
    "dist/index.html": b"<html></html>\n",
    "dist/app.sh": b"#!/bin/sh\necho built\n",
    "dist/a/b/c.txt": b"deep\n",
    "dist/with space.txt": b"space\n",
    "dist/[brackets].txt": b"brackets\n",
    "dist/~tilde.txt": b"tilde\n",
    UNICODE_NAME: "unicode ✓\n".encode(),
    "dist/.hidden": b"dot file\n",
}


def docker_workspace() -> bytes:
    """A workspace tar with the hard cases, as Docker's archive endpoint sends it."""
    members = [
        directory("workspace"),
        directory("workspace/dist"),
        directory("workspace/dist/a"),
        directory("workspace/dist/a/b"),
        directory("workspace/dist/empty", mode=0o750),
        directory("workspace/src"),
        Member("workspace/src/main.py", data=b"print('not an artifact')\n"),
    ]
    for path, data in NAMED_FILES.items():
        mode = 0o755 if path.endswith(".sh") else 0o644
        members.append(Member(f"workspace/{path}", data=data, mode=mode))
    members += [
        symlink("workspace/dist/latest.html", "index.html"),
        symlink("workspace/dist/a-link", "a/b"),
        symlink("workspace/dist/hostname", "/etc/hostname"),
        symlink("workspace/dist/root", "/"),
        symlink("workspace/dist/escape", "../../etc/passwd"),
        symlink("workspace/dist/up", ".."),
        # Read as text, "up/.." is dist, but through the link it is above the root.
        symlink("workspace/dist/sneaky", "up/../etc/passwd"),
        Member(
            "workspace/dist/index-copy.html",
            tarfile.LNKTYPE,
            linkname="workspace/dist/index.html",
        ),
        Member("workspace/dist/build.fifo", tarfile.FIFOTYPE),
        Member("workspace/dist/null", tarfile.CHRTYPE),
    ]
    return build_tar(members)


def collect(
    data: bytes, patterns: list[str], tmp_path: Path, max_bytes: int = 1 << 30
) -> Collected:
    return collect_from_tar(
        stream_only(data),
        patterns,
        max_bytes=max_bytes,
        staging_parent=str(tmp_path),
    )


def test_collect_selects_and_skips(tmp_path: Path) -> None:
    with collect(docker_workspace(), ["dist/**/*"], tmp_path) as collected:
        paths = {entry.path for entry in collected.entries}
        warnings = "\n".join(collected.warnings)

    assert set(NAMED_FILES) <= paths
    assert {"dist", "dist/empty", "dist/latest.html", "dist/a-link"} <= paths
    assert "dist/index-copy.html" in paths
    assert "src/main.py" not in paths
    for unsafe in ("hostname", "root", "escape", "sneaky", "build.fifo", "null"):
        assert f"dist/{unsafe}" not in paths
        assert f"'dist/{unsafe}'" in warnings
    assert collected.unmatched_patterns == []


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_round_trip_keeps_tree(tmp_path: Path, fmt: ArchiveFormat) -> None:
    dest = tmp_path / "out"

    with collect(docker_workspace(), ["dist"], tmp_path) as collected:
        written = collected.write_archive(fmt)
        archive_bytes = Path(written.path).read_bytes()
        safe_extract(written.path, str(dest))

    assert written.size == len(archive_bytes)
    assert written.sha256 == hashlib.sha256(archive_bytes).hexdigest()
    for path, data in NAMED_FILES.items():
        assert (dest / path).read_bytes() == data, path
    assert stat.S_IMODE((dest / "dist/app.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "dist/index.html").stat().st_mode) == 0o644
    assert (dest / "dist/empty").is_dir()
    assert list((dest / "dist/empty").iterdir()) == []
    assert stat.S_IMODE((dest / "dist/empty").stat().st_mode) == 0o750
    assert os.readlink(dest / "dist/latest.html") == "index.html"
    assert os.readlink(dest / "dist/a-link") == "a/b"
    assert os.readlink(dest / "dist/up") == ".."
    assert (dest / "dist/index-copy.html").read_bytes() == NAMED_FILES[
        "dist/index.html"
    ]
    for unsafe in ("hostname", "root", "escape", "sneaky"):
        assert not os.path.lexists(dest / "dist" / unsafe)


def test_zip_entry_attributes(tmp_path: Path) -> None:
    with collect(docker_workspace(), ["dist"], tmp_path) as collected:
        written = collected.write_archive("zip")
        with zipfile.ZipFile(written.path) as archive:
            infos = {info.filename: info for info in archive.infolist()}

    unicode_entry = infos[UNICODE_NAME]
    assert unicode_entry.flag_bits & 0x800
    assert stat.S_IMODE(infos["dist/app.sh"].external_attr >> 16) == 0o755
    assert stat.S_ISREG(infos["dist/app.sh"].external_attr >> 16)
    assert stat.S_ISLNK(infos["dist/latest.html"].external_attr >> 16)
    assert stat.S_ISDIR(infos["dist/empty/"].external_attr >> 16)


def test_tar_gz_entry_attributes(tmp_path: Path) -> None:
    with collect(docker_workspace(), ["dist"], tmp_path) as collected:
        written = collected.write_archive("tar.gz")
        with tarfile.open(written.path, "r:gz") as archive:
            members = {member.name: member for member in archive.getmembers()}

    assert members["dist/app.sh"].mode == 0o755
    assert members["dist/latest.html"].issym()
    assert members["dist/latest.html"].linkname == "index.html"
    assert members["dist/empty"].isdir()
    assert UNICODE_NAME in members


def test_size_limit_names_limit_and_key(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    data = build_tar(
        [
            directory("workspace"),
            Member("workspace/a.bin", data=b"x" * 600),
            Member("workspace/b.bin", data=b"y" * 600),
        ]
    )

    with pytest.raises(ArtifactTooLarge) as caught:
        collect(data, ["*.bin"], staging, max_bytes=1000)

    assert caught.value.limit == 1000
    assert caught.value.reached == 1200
    assert "artifacts.max_bytes_per_job" in str(caught.value)
    assert "1000" in str(caught.value)
    assert list(staging.iterdir()) == []


def test_unmatched_pattern_warns_and_continues(tmp_path: Path) -> None:
    with collect(docker_workspace(), ["missing/**", "dist/*.html"], tmp_path) as got:
        paths = {entry.path for entry in got.entries}

    assert "dist/index.html" in paths
    assert got.unmatched_patterns == ["missing/**"]
    assert any("'missing/**'" in warning for warning in got.warnings)


def test_hostile_member_names_skipped(tmp_path: Path) -> None:
    data = build_tar(
        [
            directory("workspace"),
            Member("workspace/../evil.txt", data=b"evil"),
            Member("/workspace/abs.txt", data=b"abs"),
            Member("elsewhere/file.txt", data=b"outside root"),
            Member("workspace/ok.txt", data=b"ok"),
        ]
    )

    with collect(data, ["**"], tmp_path) as collected:
        paths = [entry.path for entry in collected.entries]
        staged = sorted(os.listdir(collected.staging_dir))

    assert paths == ["ok.txt"]
    assert staged == ["00000000"]
    assert len(collected.warnings) == 3
    assert not (tmp_path.parent / "evil.txt").exists()


def test_hard_link_outside_skipped(tmp_path: Path) -> None:
    data = build_tar(
        [
            directory("workspace"),
            Member("workspace/passwd", tarfile.LNKTYPE, linkname="etc/passwd"),
            Member("workspace/up", tarfile.LNKTYPE, linkname="workspace/../x"),
        ]
    )

    with collect(data, ["**"], tmp_path) as collected:
        paths = [entry.path for entry in collected.entries]

    assert paths == []
    assert any("'passwd'" in warning for warning in collected.warnings)
    assert any("'up'" in warning for warning in collected.warnings)


def test_invalid_pattern_raises_before_reading(tmp_path: Path) -> None:
    stream = io.BytesIO(b"not read")

    with pytest.raises(InvalidPattern, match=re.escape("'../etc'")):
        collect_from_tar(stream, ["../etc"], max_bytes=10)

    assert stream.tell() == 0


def test_broken_stream_raises_invalid_archive(tmp_path: Path) -> None:
    with pytest.raises(InvalidArchive):
        collect(b"\x01" * 1024, ["**"], tmp_path)

    assert list(tmp_path.iterdir()) == []

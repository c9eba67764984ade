"""`safe_extract` on crafted tar.gz and zip archives that try to escape."""

import io
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from libs.artifacts import InvalidArchive, UnsafeArchive, safe_extract


def make_tar_gz(path: Path, members: list[tarfile.TarInfo]) -> None:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            data = b"payload" if info.isreg() else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)


def tar_member(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o644
    return info


def make_zip(path: Path, entries: list[tuple[str, int, bytes]]) -> None:
    """Write (name, unix file type and mode, content) entries."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, mode, data in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            archive.writestr(info, data)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """A destination two levels below tmp_path, so `../../evil` lands in tmp_path."""
    target = tmp_path / "a" / "dest"
    target.mkdir(parents=True)
    return target


def assert_nothing_written(tmp_path: Path, dest: Path) -> None:
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "dest"]


@pytest.mark.parametrize(
    ("name", "kind", "link"),
    [
        ("../../evil", tarfile.REGTYPE, ""),
        ("ok/../../../evil", tarfile.REGTYPE, ""),
        ("/tmp/evil-absolute", tarfile.REGTYPE, ""),
        ("evil-link", tarfile.SYMTYPE, "../../evil"),
        ("abs-link", tarfile.SYMTYPE, "/etc/passwd"),
        ("hard", tarfile.LNKTYPE, "../../evil"),
        ("device", tarfile.CHRTYPE, ""),
    ],
)
def test_tar_gz_escape_rejected(
    tmp_path: Path, dest: Path, name: str, kind: bytes, link: str
) -> None:
    archive = tmp_path / "a" / "evil.tar.gz"
    make_tar_gz(archive, [tar_member("fine.txt"), tar_member(name, kind, link)])

    with pytest.raises(UnsafeArchive) as caught:
        safe_extract(str(archive), str(dest))

    assert caught.value.member in (name, name.lstrip("/"))
    archive.unlink()
    assert_nothing_written(tmp_path, dest)


def test_tar_write_through_link_rejected(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "a" / "through.tar.gz"
    members = [tar_member("up", tarfile.SYMTYPE, "."), tar_member("up/x.txt")]
    make_tar_gz(archive, members)

    with pytest.raises(UnsafeArchive, match=re.escape("'up/x.txt'")):
        safe_extract(str(archive), str(dest))


def test_tar_link_chain_escape_rejected(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "a" / "chain.tar.gz"
    # Each link alone stays inside, but "dot/.." is the parent of dest.
    members = [
        tar_member("sneaky", tarfile.SYMTYPE, "dot/.."),
        tar_member("dot", tarfile.SYMTYPE, "."),
    ]
    make_tar_gz(archive, members)

    with pytest.raises(UnsafeArchive, match="'sneaky'"):
        safe_extract(str(archive), str(dest))


@pytest.mark.parametrize(
    ("name", "mode", "data"),
    [
        ("../../evil", stat.S_IFREG | 0o644, b"evil"),
        ("/tmp/evil-absolute", stat.S_IFREG | 0o644, b"evil"),
        ("evil-link", stat.S_IFLNK | 0o777, b"../../evil"),
        ("abs-link", stat.S_IFLNK | 0o777, b"/etc/passwd"),
        ("fifo", stat.S_IFIFO | 0o644, b""),
    ],
)
def test_zip_escape_rejected(
    tmp_path: Path, dest: Path, name: str, mode: int, data: bytes
) -> None:
    archive = tmp_path / "a" / "evil.zip"
    make_zip(archive, [("fine.txt", stat.S_IFREG | 0o644, b"ok"), (name, mode, data)])

    with pytest.raises(UnsafeArchive) as caught:
        safe_extract(str(archive), str(dest))

    assert caught.value.member == name
    archive.unlink()
    assert_nothing_written(tmp_path, dest)


def test_zip_nul_name_rejected(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "a" / "nul.zip"
    make_zip(archive, [("ok.txt", stat.S_IFREG | 0o644, b"ok")])
    raw = archive.read_bytes().replace(b"ok.txt", b"o\0.txt")
    archive.write_bytes(raw)

    with pytest.raises(UnsafeArchive, match="NUL"):
        safe_extract(str(archive), str(dest))


def test_existing_link_in_dest_not_followed(tmp_path: Path, dest: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "sub").symlink_to(outside)
    archive = tmp_path / "a" / "plain.zip"
    make_zip(archive, [("sub/file.txt", stat.S_IFREG | 0o644, b"data")])

    with pytest.raises(UnsafeArchive, match=re.escape("'sub/file.txt'")):
        safe_extract(str(archive), str(dest))

    assert list(outside.iterdir()) == []


def test_size_limit_on_extract(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "a" / "big.zip"
    make_zip(archive, [("big.bin", stat.S_IFREG | 0o644, b"0" * 2048)])

    with pytest.raises(UnsafeArchive, match="1024 bytes"):
        safe_extract(str(archive), str(dest), max_bytes=1024)


def test_plain_zip_extracts(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "a" / "plain.zip"
    make_zip(
        archive,
        [
            ("bin/", stat.S_IFDIR | 0o755, b""),
            ("bin/run", stat.S_IFREG | 0o755, b"#!/bin/sh\n"),
            ("bin/run-link", stat.S_IFLNK | 0o777, b"run"),
        ],
    )

    extracted = safe_extract(str(archive), str(dest))

    assert extracted == ["bin", "bin/run", "bin/run-link"]
    assert stat.S_IMODE((dest / "bin/run").stat().st_mode) == 0o755
    assert (dest / "bin/run-link").readlink() == Path("run")


def test_not_an_archive(tmp_path: Path, dest: Path) -> None:
    junk = tmp_path / "a" / "junk.bin"
    junk.write_bytes(b"\x00\x01" * 300)

    with pytest.raises(InvalidArchive, match=re.escape("junk.bin")):
        safe_extract(str(junk), str(dest))

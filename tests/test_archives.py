"""unpack(): every supported archive kind, path traversal, links, corrupt archives, atomicity."""

from __future__ import annotations

import io
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from lofiseg.data.archives import ArchiveError, UnsafeArchiveError, archive_kind, extract_into, unpack

CONTENT = {"top/a.txt": b"alpha", "top/sub/b.bin": bytes(range(200)), "c.txt": b"gamma"}
TAR_MODES = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz", ".tar.bz2": "w:bz2", ".tar.xz": "w:xz"}


def make_zip(path: Path, files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def make_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz",
             links: dict[str, tuple[bytes, str]] | None = None) -> Path:
    """``links``: name -> (tarfile.SYMTYPE or LNKTYPE, target)."""
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tf.addfile(info)
    return path


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_zip_round_trip(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "set.zip", CONTENT)
    out = unpack(archive, tmp_path / "out")
    assert out == tmp_path / "out"
    assert read_tree(out) == CONTENT


@pytest.mark.parametrize("suffix", sorted(TAR_MODES))
def test_tar_round_trip(tmp_path: Path, suffix: str) -> None:
    archive = make_tar(tmp_path / f"set{suffix}", CONTENT, TAR_MODES[suffix])
    assert archive_kind(archive) == "tar"
    assert read_tree(unpack(archive, tmp_path / "out")) == CONTENT


@pytest.mark.parametrize(("mode", "name"), [("w:gz", "blob"), ("w:bz2", "blob"), ("w:xz", "blob"), ("w", "blob")])
def test_kind_from_magic_bytes_without_suffix(tmp_path: Path, mode: str, name: str) -> None:
    archive = make_tar(tmp_path / name, CONTENT, mode)
    assert archive_kind(archive) == "tar"
    assert read_tree(unpack(archive, tmp_path / "out")) == CONTENT
    zipped = make_zip(tmp_path / "zblob", CONTENT)
    assert archive_kind(zipped) == "zip"


def test_folder_passes_through(tmp_path: Path) -> None:
    assert unpack(tmp_path, tmp_path / "elsewhere") == tmp_path
    assert not (tmp_path / "elsewhere").exists()


def test_macos_debris_is_skipped(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "mac.zip", {"images/1.jpg": b"x", "__MACOSX/images/._1.jpg": b"junk"})
    assert read_tree(unpack(archive, tmp_path / "out")) == {"images/1.jpg": b"x"}


def test_success_replaces_previous_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    unpack(make_zip(tmp_path / "set.zip", CONTENT), tmp_path / "out")
    assert read_tree(tmp_path / "out") == CONTENT


@pytest.mark.parametrize("member", ["../evil.txt", "ok/../../evil.txt", "/abs/evil.txt", "..\\evil.txt", "C:/evil.txt"])
def test_zip_traversal_is_rejected(tmp_path: Path, member: str) -> None:
    archive = make_zip(tmp_path / "bad.zip", {"fine.txt": b"x", member: b"evil"})
    with pytest.raises(UnsafeArchiveError, match="bad.zip") as info:
        unpack(archive, tmp_path / "out" / "dest")
    assert repr(member) in str(info.value)
    assert not (tmp_path / "out" / "dest").exists()
    assert not list(tmp_path.rglob("evil.txt"))
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # the temporary folder is gone too


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "a/../../evil.txt"])
def test_tar_traversal_is_rejected(tmp_path: Path, member: str) -> None:
    archive = make_tar(tmp_path / "bad.tar.gz", {"fine.txt": b"x", member: b"evil"})
    with pytest.raises(UnsafeArchiveError, match=r"bad\.tar\.gz"):
        unpack(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert not list(tmp_path.rglob("evil.txt"))


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside", "sub/../../../outside"])
def test_tar_symlink_out_of_tree_is_rejected(tmp_path: Path, target: str) -> None:
    archive = make_tar(tmp_path / "link.tar", {"fine.txt": b"x"}, "w", {"sub/link": (tarfile.SYMTYPE, target)})
    with pytest.raises(UnsafeArchiveError, match="points outside the tree|is absolute"):
        unpack(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_tar_hardlink_out_of_tree_is_rejected(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "hard.tar", {"fine.txt": b"x"}, "w", {"h": (tarfile.LNKTYPE, "../secret")})
    with pytest.raises(UnsafeArchiveError, match="points outside the tree"):
        unpack(archive, tmp_path / "dest")


def test_tar_symlink_chain_escaping_through_a_link_is_rejected(tmp_path: Path) -> None:
    # "up" -> "." is harmless alone, but "up/.." lexically stays inside while really naming the parent.
    archive = make_tar(tmp_path / "chain.tar", {}, "w",
                       {"up": (tarfile.SYMTYPE, "."), "esc": (tarfile.SYMTYPE, "up/..")})
    with pytest.raises(UnsafeArchiveError):
        unpack(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_tar_device_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dev.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("null")
        info.type = tarfile.CHRTYPE
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="special file"):
        unpack(path, tmp_path / "dest")


def test_links_inside_the_tree_are_kept(tmp_path: Path) -> None:
    tar = make_tar(tmp_path / "in.tar", {"data/a.txt": b"alpha"}, "w",
                   {"data/alias.txt": (tarfile.SYMTYPE, "a.txt"), "copy.txt": (tarfile.LNKTYPE, "data/a.txt")})
    out = unpack(tar, tmp_path / "t")
    assert (out / "data" / "alias.txt").is_symlink() and (out / "data" / "alias.txt").read_bytes() == b"alpha"
    assert (out / "copy.txt").read_bytes() == b"alpha"
    zipped = make_zip(tmp_path / "in.zip", {"data/a.txt": b"alpha"}, {"data/alias.txt": "a.txt"})
    out = unpack(zipped, tmp_path / "z")
    assert (out / "data" / "alias.txt").is_symlink() and (out / "data" / "alias.txt").read_bytes() == b"alpha"


def test_zip_symlink_out_of_tree_is_rejected(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "l.zip", {"a.txt": b"x"}, {"link": "../../etc/passwd"})
    with pytest.raises(UnsafeArchiveError, match="points outside the tree"):
        unpack(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz", ".tar.bz2", ".tar.xz", ".tar"])
def test_truncated_archive_is_a_clear_error(tmp_path: Path, suffix: str) -> None:
    big = {"a.bin": bytes(range(256)) * 64, "b.bin": bytes(reversed(range(256))) * 64}
    good = tmp_path / f"good{suffix}"
    if suffix == ".zip":
        make_zip(good, big)
    else:
        make_tar(good, big, TAR_MODES[suffix])
    data = good.read_bytes()
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match=re.escape(f"broken{suffix}: corrupt or truncated")):
        unpack(broken, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_zip_with_flipped_bytes_fails_its_crc(tmp_path: Path) -> None:
    archive = tmp_path / "crc.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.txt", b"A" * 1000)
    data = bytearray(archive.read_bytes())
    start = data.index(b"A" * 1000)
    data[start + 10] = ord("B")
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"crc\.zip: corrupt"):
        unpack(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_not_an_archive(tmp_path: Path) -> None:
    html = tmp_path / "page.html"
    html.write_bytes(b"<html>sign in to download</html>")
    assert archive_kind(html) is None
    with pytest.raises(ArchiveError, match=r"page\.html: not a supported archive"):
        unpack(html, tmp_path / "dest")
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"<html>sign in to download</html>")
    with pytest.raises(ArchiveError, match=r"fake\.zip: corrupt"):
        unpack(fake, tmp_path / "dest")
    with pytest.raises(ArchiveError, match="archive file is missing"):
        unpack(tmp_path / "absent.zip", tmp_path / "dest")


def test_extract_into_refuses_to_overwrite(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    extract_into(make_zip(tmp_path / "one.zip", {"shared/x.txt": b"1"}), tree)
    with pytest.raises(ArchiveError, match="would overwrite"):
        extract_into(make_tar(tmp_path / "two.tar", {"shared/x.txt": b"2"}, "w"), tree)
    assert (tree / "shared" / "x.txt").read_bytes() == b"1"

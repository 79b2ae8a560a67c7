"""Safe, atomic unpacking of zip and tar (plain, gzip, bzip2, xz) archives.

Every member name is checked before anything is written: absolute names, ``..`` components, and symbolic
or hard links that resolve outside the destination are refused (:class:`UnsafeArchiveError`), as are device
files and FIFOs. Extraction goes into a temporary sibling folder renamed into place only when the whole
archive unpacked (:func:`lofiseg.atomic.atomic_dir`), so a corrupt or hostile archive leaves nothing behind.
macOS resource-fork debris (``__MACOSX/`` folders) is skipped.
"""

from __future__ import annotations

import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from lofiseg.atomic import atomic_dir

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
_MAGIC = (  # (offset, bytes, kind)
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),  # empty zip
    (0, b"\x1f\x8b", "tar"),  # gzip
    (0, b"BZh", "tar"),
    (0, b"\xfd7zXZ\x00", "tar"),  # xz
    (257, b"ustar", "tar"),
)
_SKIPPED_TOP = "__MACOSX"
_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """An archive is corrupt, of an unsupported kind, or conflicts with files already unpacked."""


class UnsafeArchiveError(ArchiveError):
    """An archive member would be written, or would point, outside the destination folder."""


def archive_kind(path: str | os.PathLike) -> str | None:
    """``"zip"`` or ``"tar"`` from the file name's suffix, else from its first bytes; ``None`` otherwise."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if any(name.endswith(s) for s in ARCHIVE_SUFFIXES):
        return "tar"
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        head = fh.read(512)
    for offset, magic, kind in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return kind
    return None


def unpack(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack ``archive`` into the folder ``dest`` atomically and return ``dest``; a folder is returned as is.

    ``dest`` appears (replacing any previous one) only when every member was extracted.
    """
    archive, dest = Path(archive), Path(dest)
    if archive.is_dir():
        return archive
    if not archive.is_file():
        raise ArchiveError(f"{archive}: archive file is missing")
    with atomic_dir(dest) as tmp:
        extract_into(archive, tmp)
    return dest


def extract_into(archive: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Extract ``archive`` into the existing ``folder``, refusing unsafe members and existing files.

    Not atomic by itself: use :func:`unpack`, or call it inside :func:`lofiseg.atomic.atomic_dir`.
    """
    archive, folder = Path(archive), Path(folder)
    kind = archive_kind(archive)
    if kind is None:
        raise ArchiveError(f"{archive}: not a supported archive (expected one of {', '.join(ARCHIVE_SUFFIXES)})")
    try:
        if kind == "zip":
            _extract_zip(archive, folder)
        else:
            _extract_tar(archive, folder)
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, UnicodeDecodeError,
            OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a real I/O problem (disk full, permissions), not a corrupt archive
        raise ArchiveError(f"{archive}: corrupt or truncated {kind} archive ({exc})") from exc


def _member_parts(archive: Path, name: str) -> tuple[str, ...] | None:
    """The safe relative path parts of a member, ``None`` for skipped debris; unsafe names raise."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"{archive}: member {name!r} has a NUL byte in its name")
    normal = name.replace("\\", "/")
    if normal.startswith("/") or (len(normal) > 1 and normal[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    parts = tuple(p for p in normal.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} points outside the archive root ('..')")
    if parts and parts[0] == _SKIPPED_TOP:
        return None
    return parts


def _check_link(archive: Path, parts: tuple[str, ...], target: str, hard: bool) -> None:
    """A link inside the tree must resolve inside it too (hard links are relative to the root)."""
    normal = target.replace("\\", "/")
    if normal.startswith("/") or (len(normal) > 1 and normal[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: link {'/'.join(parts)!r} -> {target!r} is absolute")
    base = "" if hard else posixpath.dirname("/".join(parts))
    resolved = posixpath.normpath(posixpath.join(base, normal))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(f"{archive}: link {'/'.join(parts)!r} -> {target!r} points outside the tree")


def _target(folder: Path, archive: Path, parts: tuple[str, ...]) -> Path:
    target = folder.joinpath(*parts)
    if target.exists() or target.is_symlink():
        raise ArchiveError(f"{archive}: member {'/'.join(parts)!r} would overwrite existing {target}")
    return target


def _check_resolved(archive: Path, root: Path, path: Path, name: str) -> None:
    """After earlier members (maybe symlinks) were written, ``path`` must still resolve inside ``root``."""
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise UnsafeArchiveError(f"{archive}: member {name!r} resolves outside the tree (through a link)")


def _extract_zip(archive: Path, folder: Path) -> None:
    root = Path(os.path.realpath(folder))
    with zipfile.ZipFile(archive) as zf:
        members = []
        for info in zf.infolist():
            parts = _member_parts(archive, info.filename)
            if not parts:
                continue
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                _check_link(archive, parts, zf.read(info).decode("utf-8"), hard=False)
            members.append((info, parts, mode))
        for info, parts, mode in members:
            if info.is_dir():
                _check_resolved(archive, root, folder.joinpath(*parts), info.filename)
                folder.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                continue
            target = _target(folder, archive, parts)
            _check_resolved(archive, root, target.parent, info.filename)
            target.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISLNK(mode):
                link = zf.read(info).decode("utf-8")
                _check_resolved(archive, root, target.parent / link, info.filename)
                os.symlink(link, target)
                continue
            with zf.open(info) as src, open(target, "wb") as dst:  # the CRC is checked at the end of read
                shutil.copyfileobj(src, dst, _CHUNK)


def _extract_tar(archive: Path, folder: Path) -> None:
    # bz2 and lzma raise their own errors on corrupt streams; the tarfile module does not wrap them all.
    try:
        tf = tarfile.open(archive, mode="r:*")
    except tarfile.ReadError as exc:
        raise ArchiveError(f"{archive}: corrupt or truncated tar archive ({exc})") from exc
    with tf:
        kept = []
        for member in tf:  # streams through the archive: a truncated one fails here, before any write
            parts = _member_parts(archive, member.name)
            if not parts:
                continue
            if member.issym() or member.islnk():
                _check_link(archive, parts, member.linkname, hard=member.islnk())
            elif not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device, FIFO or other "
                                         "special file")
            if not member.isdir():
                _target(folder, archive, parts)
            member.name = "/".join(parts)
            if member.islnk():
                member.linkname = posixpath.normpath(member.linkname.replace("\\", "/"))
            kept.append(member)
        try:
            tf.extractall(folder, members=kept, filter="data")  # defence in depth: the stdlib's checks too
        except tarfile.FilterError as exc:
            raise UnsafeArchiveError(f"{archive}: unsafe member ({exc})") from exc


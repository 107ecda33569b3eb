"""Atomic file writes: write to a temporary file in the same folder, then rename.

A reader (or a resumed run) therefore sees either the old file or the complete new one,
never a half-written file, even if the process is killed mid-write.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

import numpy as np

#: Temporary files carry this marker so that leftovers of a killed run can be recognised.
TMP_MARKER = ".vadpipe-tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Mode of files created by :func:`atomic_open`, as ``open()`` would create them.
_DEFAULT_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open writes only; got mode {mode!r}")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + TMP_MARKER, dir=target.parent)
    except OSError as e:
        _raise_if_full(e, target)
        raise
    try:
        os.chmod(tmp, _DEFAULT_FILE_MODE)  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            _raise_if_full(e, target)
        raise


#: ``errno`` values of a full disk or an exhausted quota.
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _raise_if_full(e: OSError, target: Path) -> None:
    """Turn a full disk into :class:`~vadpipe.errors.DiskFullError` (one clear line for the CLI)."""
    if e.errno in _FULL:
        from vadpipe.errors import DiskFullError

        raise DiskFullError(f"no space left on the device writing {target} ({os.strerror(e.errno)}): nothing "
                            "half-written was kept; free some space and run the same command again (finished "
                            "work is kept and skipped)") from e


class _HashingWriter:
    """A write-only file wrapper that feeds every byte written to a sha256."""

    def __init__(self, fh: IO[bytes]):
        self._fh = fh
        self.hash = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.hash.update(data)
        return self._fh.write(data)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> str:
    """Save ``array`` as ``.npy`` at ``path`` atomically.

    Returns:
        The sha256 (hex) of the file's bytes, computed while writing (no second read).
    """
    with atomic_open(path, "wb") as fh:
        writer = _HashingWriter(fh)
        np.save(writer, array, allow_pickle=False)
    return writer.hash.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of the file at ``path``, read in ``chunk``-byte pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_stamp(path: str | os.PathLike) -> str:
    """``"<size>:<mtime_ns>"`` of ``path``: changes whenever the file is rewritten or replaced."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create the output folder ``path`` (and its parents) and check that a file can be
    written in it, so that a command fails before doing any work rather than at its first write.

    Returns:
        ``Path(path)``.

    Raises:
        ConfigError: the folder cannot be created (a parent is a file, a read-only or virtual
            file system such as ``/proc``, no permission) or a file cannot be written in it,
            naming the folder and the operating system's reason.
    """
    from vadpipe.errors import ConfigError

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output folder {folder} is a file, not a folder; give a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output folder {folder}: {_reason(e)}; give a folder you can write to") from None
    try:
        fd, probe = tempfile.mkstemp(prefix="write-check" + TMP_MARKER, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"cannot write to output folder {folder}: {_reason(e)}; give a folder you can write to") from None
    return folder


def ensure_writable_file(path: str | os.PathLike) -> Path:
    """Check that the output file ``path`` can be written (its folder is created and
    writable, ``path`` is not a folder) before any work; returns ``Path(path)``.

    Raises:
        ConfigError: as :func:`ensure_writable_dir`, or ``path`` is an existing folder.
    """
    from vadpipe.errors import ConfigError

    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"output file {target} is a folder; give a file path")
    ensure_writable_dir(target.parent)
    return target


def _reason(e: OSError) -> str:
    """The operating system's reason of ``e`` (``Permission denied``, ``Read-only file system``)."""
    return e.strerror or str(e)


#: Lock file a run holds in its output folder (see :func:`folder_lock`).
LOCK_NAME = ".vadpipe.lock"

#: Lock files this process holds now. POSIX record locks belong to the process, and closing
#: *any* descriptor of the file drops them, so a nested lock of the same folder (``score``
#: writing its features into its own output folder) must not open the file again.
_HELD: set[str] = set()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold the output folder ``folder`` for one run: a second run on it is refused at once.

    The lock is a POSIX record lock (``fcntl.lockf``) on ``folder/.vadpipe.lock``: it belongs
    to this process only (not to forked decoding workers) and the system drops it when the
    process ends however it ends, so a killed run never leaves the folder locked. The file
    says who holds it (pid and ``what``) for the message of the refused run. A folder this
    process holds already is held again at no cost (nested runs). Where ``fcntl`` does not
    exist (Windows) no lock is taken.

    Raises:
        ConfigError: another process holds the folder (naming its pid and command).
    """
    from vadpipe.errors import ConfigError

    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield Path(folder)
        return
    path = Path(folder) / LOCK_NAME
    key = os.path.realpath(path)
    if key in _HELD:
        yield Path(folder)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            raise ConfigError(f"{folder} is in use by {holder}: wait for that run to finish, or write to "
                              "another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({what})".encode(), 0)
        _HELD.add(key)
        try:
            yield Path(folder)
        finally:
            _HELD.discard(key)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing drops the lock

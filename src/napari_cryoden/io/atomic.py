"""Atomic writes: write to a temporary file in the target's folder, then rename into place.

The temporary file is ``.<target name>.<host>-<pid>.<random>.part<target extensions>``: hidden,
never the target's name, and tagged with the writing process (a target name too long for that
is cut and completed by a hash, so the temporary name stays within the 255-byte limit). The
writer holds an ``flock`` on it while writing. A process killed with SIGKILL cannot remove its
own temporary file; the next write to the same target removes the temporary files of this host
whose writer is provably gone: no process of that pid, and no lock held on the file (a live
writer in another PID namespace keeps its lock; :func:`remove_stale_parts`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid check alone protects live writers
    fcntl = None

__all__ = ["atomic_path", "remove_stale_parts", "same_file"]


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when `a` and `b` name the same existing file (symlinks and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "host"


#: Longest target name (bytes) used whole in a temporary name: 255 bytes less the dot, host
#: (32), pid, random part, ``.part`` and up to 16 bytes of extensions.
_MAX_NAME_IN_PART = 170


def _name_in_part(target: Path) -> str:
    """The target's name as it appears in its temporary files: whole, or when longer than
    :data:`_MAX_NAME_IN_PART` bytes, its start and a hash of the whole name."""
    raw = target.name.encode("utf-8", "surrogateescape")
    if len(raw) <= _MAX_NAME_IN_PART:
        return target.name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return raw[: _MAX_NAME_IN_PART - 17].decode("utf-8", "ignore") + "~" + digest


def _part_suffix(target: Path) -> str:
    ext = "".join(target.suffixes[-2:])
    return ".part" + (ext if len(ext.encode("utf-8", "surrogateescape")) <= 16 else "")


def _locked_by_another(path: Path) -> bool:
    """True when another open file description holds an ``flock`` on `path` (a live writer)."""
    if fcntl is None:  # pragma: no cover
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return True  # cannot tell: keep it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the lock we took
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_parts(target: str | os.PathLike) -> list[Path]:
    """Remove temporary files of `target` left by dead writers on this host.

    Parameters
    ----------
    target : path-like
        The final output path whose leftovers to look for, in its folder.

    Returns
    -------
    list of Path
        The files removed. Temporary files of live processes (a pid that exists here, or a lock
        held on the file), of other hosts (a shared file system) and of other targets are never
        touched.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(re.escape(f".{_name_in_part(target)}.{_host()}-") + r"(\d+)\.[^.]+\.part")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if (m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))
                and not _locked_by_another(folder / name)):
            with contextlib.suppress(OSError):
                (folder / name).unlink()
                removed.append(folder / name)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it is renamed to `target`.

    On any exception (a cancel included) the temporary file is removed and `target` is untouched.
    Leftovers of killed earlier writers of the same target are removed first.

    Parameters
    ----------
    target : path-like
    overwrite : bool, default=True
        Replace an existing `target`.

    Yields
    ------
    Path
        The temporary file (created empty, with the usual permissions for a new file).

    Raises
    ------
    FileExistsError
        If `overwrite` is False and `target` exists (checked before and after writing).
    """
    target = Path(target)
    if not overwrite and target.exists():
        raise FileExistsError(f"{target} exists; refusing to overwrite it")
    folder = target.parent if str(target.parent) else Path(".")
    remove_stale_parts(target)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{_name_in_part(target)}.{_host()}-{os.getpid()}.", suffix=_part_suffix(target), dir=folder,
    )
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):  # a file system without locks: the pid check alone
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held until the end: the writer lives
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a result gets the usual permissions
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)  # again: some writers (safetensors) replace the file with a 0600 one
        if overwrite:
            os.replace(tmp, target)
        else:  # link() fails if the target appeared meanwhile, where rename would clobber it
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise FileExistsError(f"{target} appeared while writing; refusing to overwrite it") from None
            except OSError:  # a file system without hard links
                if target.exists():
                    raise FileExistsError(f"{target} appeared while writing; refusing to overwrite it") from None
                os.replace(tmp, target)
            else:
                tmp.unlink()
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        os.close(fd)

"""Atomic file writes: a crash or Ctrl-C never leaves a truncated checkpoint, log or image."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, writer) -> Path:
    """Call ``writer(tmp_path)`` on a temporary file in the target's folder, then rename it onto
    ``path`` (atomic on POSIX and Windows). The file gets the usual permissions (0666 & ~umask),
    not mkstemp's private 0600."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def remove_stale_temporaries(folder, names) -> list:
    """Delete the temporary files :func:`atomic_write` leaves behind when a process is killed
    mid-write (``.<name>.*.tmp`` for each of ``names`` in ``folder``). Returns what was removed."""
    folder = Path(folder)
    removed = []
    for name in names:
        for tmp in folder.glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


# ---- one run per output ---------------------------------------------------------------------------

class OutputLockedError(RuntimeError):
    """Another live process is writing the same output (a run folder, a chunked prediction)."""


_held_locks: dict = {}  # resolved lock path -> [file descriptor, depth]: re-entrant within a process


def _owner_text(info: dict) -> str:
    parts = [f"pid {info.get('pid', '?')} on {info.get('host', '?')}"]
    if info.get("started"):
        parts.append(f"since {info['started']}")
    if info.get("command"):
        parts.append(f"running {info['command']!r}")
    return ", ".join(parts)


def _read_owner(fd) -> dict:
    import json

    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 65536).decode() or "{}")
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class OutputLock:
    """An exclusive claim on an output for the life of a ``with`` block: the lock file ``path``
    holds the owner's pid, host, start time and command. A second process that asks for the same
    lock gets :class:`OutputLockedError` naming the owner. A lock left by a killed process is
    stale and taken over: on POSIX the file is also ``flock``-ed, and the kernel drops that when
    its process dies, however it dies; elsewhere (or where flock is not supported) a lock of this
    host whose pid no longer runs is stale. Re-entrant within one process; the file is removed on
    release. ``what`` names the output in messages."""

    def __init__(self, path, what: str):
        self.path, self.what = Path(path), what
        self.stale_owner = None  # the owner of a stale lock that was taken over, if any

    def __enter__(self):
        key = str(self.path.resolve())
        if key in _held_locks:
            _held_locks[key][1] += 1
            return self
        import json
        import socket
        import sys
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                owner = _read_owner(fd)
                try:
                    import fcntl

                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    live = False  # we hold the flock: whoever wrote the file is gone
                except BlockingIOError:
                    live = True
                except (ImportError, OSError):  # no flock here (Windows, some network file systems)
                    here = owner.get("host") == socket.gethostname()
                    live = bool(owner) and ((here and owner.get("pid") != os.getpid() and _pid_alive(owner.get("pid")))
                                            or not here)
                if live:
                    raise OutputLockedError(
                        f"{self.what} is in use by another run ({_owner_text(owner)}); wait for it to finish or "
                        f"use another output (if no such run exists, delete {self.path})")
                try:  # the previous owner may have removed the file between our open and our flock
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                self.stale_owner = owner or None
                info = {"pid": os.getpid(), "host": socket.gethostname(),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, json.dumps(info).encode())
                os.fsync(fd)
                break
            except BaseException:
                os.close(fd)
                raise
        _held_locks[key] = [fd, 1]
        return self

    def __exit__(self, *exc):
        key = str(self.path.resolve())
        entry = _held_locks.get(key)
        if entry is None:
            return False
        entry[1] -= 1
        if entry[1] == 0:
            del _held_locks[key]
            try:
                self.path.unlink()  # before closing: no other process can hold it in between
            except OSError:
                pass
            os.close(entry[0])
        return False

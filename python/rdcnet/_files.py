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

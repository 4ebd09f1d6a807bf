"""Choose the fastest of several equivalent ways to compute something by timing them, once per
kind of call, like ``torch.backends.cudnn.benchmark``.

An :class:`Autotuner` times each candidate on the first call of a kind (a *key*: device, dtype,
shapes, ...) within a small budget, keeps the winner in memory and in a per-user cache file
(``<cache_dir>/<name>.json``, :func:`rdcnet.machine.cache_dir`), stored under the key of this
machine (:func:`rdcnet.machine.machine_key`: processor, threads, torch and rdcnet_ext versions), so
that a later process on the same machine starts with the answer. A cache file that cannot be read,
or was written on another machine or with other versions, is ignored (and replaced when the next
winner is stored). ``RDCNET_AUTOTUNE=0`` turns tuning off: :meth:`Autotuner.choose` then returns
None and the caller uses its prior.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Optional

__all__ = ["Autotuner", "tuning_enabled"]

_FORMAT = 1


def tuning_enabled() -> bool:
    """False when ``RDCNET_AUTOTUNE=0`` (or "off"/"false")."""
    return os.environ.get("RDCNET_AUTOTUNE", "1").strip().lower() not in ("0", "off", "false", "no")


class Autotuner:
    """Winners by key for one kind of decision (``name``: also the cache file's name).

    ``budget_s``: the time a tuning may take beyond one call of each candidate (more calls of the
    candidates, interleaved, up to ``rounds`` each, are made while it lasts)."""

    def __init__(self, name: str, budget_s: float = 2.0, rounds: int = 3):
        self.name, self.budget_s, self.rounds = name, budget_s, rounds
        self._lock = threading.Lock()
        self._memory: Dict[str, dict] = {}
        self._loaded_for: Optional[str] = None  # the machine key the file was read for
        self.last_tuning: Optional[dict] = None  # the most recent measurement: key, times, winner, seconds

    @property
    def path(self) -> Path:
        from .machine import cache_dir

        return cache_dir() / f"{self.name}.json"

    def _read_file(self, machine: str) -> Dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return {}
        if not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("machine") != machine:
            return {}  # another machine, version or layout: its timings say nothing here
        entries = data.get("entries")
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("winner"), str)}

    def _write_file(self, machine: str) -> None:
        from ._files import atomic_write

        entries = {**self._read_file(machine), **self._memory}  # what other processes stored meanwhile
        try:
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(json.dumps(
                {"format": _FORMAT, "machine": machine, "entries": entries}, indent=1, sort_keys=True)))
        except OSError:  # a read-only home: the winner is still kept in memory
            pass

    def _ensure_loaded(self, machine: str) -> None:
        if self._loaded_for != machine:
            self._memory = self._read_file(machine)
            self._loaded_for = machine

    def cached(self, key: str, machine: str) -> Optional[str]:
        """The stored winner for ``key`` on ``machine`` (None when it was not tuned yet)."""
        with self._lock:
            self._ensure_loaded(machine)
            entry = self._memory.get(key)
            return entry["winner"] if entry else None

    def choose(self, key: str, machine: str, candidates: Dict[str, Callable[[], None]],
               synchronize: Callable[[], None] = lambda: None) -> Optional[str]:
        """The fastest of ``candidates`` (name -> a call that runs it once) for ``key``: from memory
        or the cache file, else measured now. None when tuning is off."""
        if not tuning_enabled():
            return None
        known = self.cached(key, machine)
        if known is not None and (known in candidates or not candidates):
            return known
        with self._lock:
            start = time.perf_counter()
            times = {name: [] for name in candidates}
            for round_ in range(self.rounds):
                for name, run in candidates.items():
                    synchronize()
                    t0 = time.perf_counter()
                    run()
                    synchronize()
                    times[name].append(time.perf_counter() - t0)
                if time.perf_counter() - start > self.budget_s + sum(t[0] for t in times.values()):
                    break
            # The first call of a candidate pays its one-time costs (allocation, kernel selection):
            # with more calls, it does not count.
            best = {n: min(t[1:] or t) for n, t in times.items()}
            winner = min(best, key=best.get)
            self._memory[key] = {"winner": winner, "seconds": {n: round(b, 6) for n, b in best.items()}}
            self.last_tuning = {"key": key, "winner": winner, "seconds": best,
                                "tuning_seconds": time.perf_counter() - start}
            self._write_file(machine)
        return winner

    def forget(self) -> None:
        """Drop what is in memory (the cache file stays): the next lookup reads the file again."""
        with self._lock:
            self._memory, self._loaded_for = {}, None

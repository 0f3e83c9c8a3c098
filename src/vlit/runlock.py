"""One writer per run directory: a lock file that names its holder.

A command that writes a run takes ``RUN/.vlit.lock``, created exclusively, holding the holder's
pid, host, command and start time. A second writer fails at once with `RunLockedError` naming
the holder; readers never take the lock. A lock left by a process that died (SIGKILL, power
loss) on this same host is taken over, with a warning on the ``vlit`` logger (stderr).
A lock held on another host is never taken over: only a person can tell that it is stale.
The lock is re-entrant within a process: every `vlit.rundir.StageWriter` takes it too, so a
stage is never written while another process holds the run.

Example:
    >>> with RunLock(Path("runs/demo"), command="vlit score runs/demo"):   # doctest: +SKIP
    ...     score_stage.run(...)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from vlit.errors import VlitError

LOCK_NAME = ".vlit.lock"
_log = logging.getLogger("vlit")
#: How many times this process holds each lock (path -> count): the file goes with the last.
_held_here: dict[Path, int] = {}


class RunLockedError(VlitError):
    """Another command is writing the run directory."""


class RunLock:
    """The writer's lock of one run directory (a context manager; see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        command: str,
        location: str | None = None,
    ) -> None:
        self.path = root / LOCK_NAME
        self.command = command
        self.location = location or str(root)
        self._held = False

    def acquire(self) -> None:
        key = self.path.absolute()
        if _held_here.get(key):
            _held_here[key] += 1
            self._held = True
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = _holder(self.command)
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_holder(self.path)
                if holder is not None and not _is_dead(holder):
                    raise RunLockedError(
                        f"another command is writing this run: {_describe(holder)}",
                        file=self.location,
                        fix="wait for it to finish, or stop it; if it is no longer running on "
                        f"its host, delete {self.path}",
                    ) from None
                if self._take_over(holder):
                    continue
                continue  # another process took it over first: look again
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(mine, handle)
            self._held = True
            _held_here[key] = 1
            return
        raise RunLockedError(
            "the run's lock keeps changing hands",
            file=self.location,
            fix="run one command at a time on this run directory",
        )

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        key = self.path.absolute()
        _held_here[key] -= 1
        if _held_here[key] > 0:
            return
        del _held_here[key]
        holder = _read_holder(self.path)
        if holder is not None and holder.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def _take_over(self, holder: dict[str, Any] | None) -> bool:
        """Move a dead holder's lock aside (atomically: one taker wins); True if this one won."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return False
        aside.unlink(missing_ok=True)
        who = _describe(holder) if holder is not None else "an unreadable lock file"
        _log.warning("vlit: took over the lock of %s from %s: not running", self.location, who)
        return True

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()


def _holder(command: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "pid_started": _process_start(os.getpid()),
        "host": socket.gethostname(),
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _read_holder(path: Path) -> dict[str, Any] | None:
    """The lock's holder; None when the file is gone, empty or damaged (a writer killed while
    writing it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_dead(holder: dict[str, Any]) -> bool:
    """True when the holder ran on this host and its process is gone (or its pid was reused)."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    started = holder.get("pid_started")
    return started is not None and _process_start(pid) not in (None, started)


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])


def _describe(holder: dict[str, Any]) -> str:
    return (
        f"`{holder.get('command', '?')}` (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, since {holder.get('started', '?')})"
    )

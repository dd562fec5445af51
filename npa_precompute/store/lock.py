"""The store's lock: one run writes a store at a time (:class:`StoreLock`), and a process
writes a tile only while its run holds the lock (:class:`LockGuard`)."""

from __future__ import annotations

import datetime
import errno
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from npa_precompute.errors import StoreError

__all__ = ["LOCK_NAME", "LockGuard", "StoreLock", "StoreLockedError"]


class StoreLockedError(StoreError):
    """Another run holds the store's lock (it is writing the store now)."""


#: The lock file in the store folder (see :class:`StoreLock`).
LOCK_NAME = ".npaloss.lock"
#: errno values of file systems that do not support locks.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


class StoreLock:
    """An exclusive lock on a store folder, held by the run that writes it.

    ``flock`` on the file :data:`LOCK_NAME` in the store folder, taken without waiting:
    a second run on the same store is refused (:class:`StoreLockedError`, naming the
    process that holds it) instead of both deleting and rewriting each other's tiles.
    The lock belongs to the open file, so the kernel releases it when the process ends
    however it ends (SIGKILL, crash, power loss of a client): a killed run never leaves
    a stale lock behind. The file itself stays (it holds the last holder's pid, host and
    start time, for the message).

    On NFS (Linux clients) ``flock`` is carried out as a POSIX byte-range lock, which
    every client sees; on file systems without lock support (some FUSE or SMB mounts,
    Lustre without its ``flock`` mount option) locking fails: the run then goes on with a
    warning that a second writer would not be detected. A store on a read-only file
    system cannot be written by anyone: the lock is not needed there.

    Use it as a context manager, or :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._line: str | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> StoreLock:
        """Take the lock (the store folder must exist).

        Raises
        ------
        StoreLockedError
            Another process holds it.
        """
        lock_path = self.path / LOCK_NAME
        for _ in range(10):
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
                writable = True
            except OSError as exc:
                if exc.errno not in _READ_ONLY:
                    raise
                try:  # a read-only file system: lock the existing file if there is one
                    fd, writable = os.open(lock_path, os.O_RDONLY), False
                except OSError:
                    return self
            try:
                _lock(fd)
            except BlockingIOError:
                holder = _holder_text(fd, lock_path, writable)
                os.close(fd)
                raise StoreLockedError(
                    f"store {self.path} is being written by another npa-precompute run"
                    f"{f' ({holder})' if holder else ''}; wait for it to finish, or write to "
                    "another --out (two runs writing one store would replace each other's tiles)"
                ) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno not in _NO_LOCKS:
                    raise
                warnings.warn(
                    f"cannot lock store {self.path} ({exc.strerror}: this file system does not "
                    "support file locks); a second run writing this store at the same time "
                    "would not be detected",
                    UserWarning,
                    stacklevel=2,
                )
                self._line = None
                return self
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the store was removed and made again while we waited: retry
                os.close(fd)
                continue
            line = None
            if writable:
                since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
                line = f"pid {os.getpid()} on {socket.gethostname()}, since {since}"
                os.ftruncate(fd, 0)
                os.write(fd, line.encode())
            self._fd = fd
            self._line = line
            return self
        raise StoreLockedError(f"cannot lock store {self.path}: its lock file keeps changing")

    @property
    def guard(self) -> LockGuard:
        """What the processes writing for this run check before each write
        (:class:`LockGuard`): this process, and the line it wrote in the lock file."""
        return LockGuard(os.path.abspath(self.path), os.getpid(), socket.gethostname(), self._line)

    def release(self) -> None:
        """Give the lock back (closing the file releases it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError(errno.EWOULDBLOCK, "locked") from None
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_text(fd: int) -> str:
    """The holder's line (it writes it right after taking the lock: wait for it up to 1 s,
    which a loaded machine can take between the two)."""
    for _ in range(50):
        try:
            text = os.pread(fd, 200, 0).decode(errors="replace").strip()
        except (OSError, AttributeError):  # no os.pread on Windows
            return ""
        if text:
            return text
        time.sleep(0.02)
    return ""


def _running(pid: int) -> bool:
    """Whether process ``pid`` of this machine is running (a zombie is not)."""
    if pid == os.getpid():
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[-1].split()[0]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass  # no /proc (macOS): ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_holders(fd: int) -> list[int]:
    """Pids holding a ``flock`` on the file of ``fd``, from Linux's ``/proc/locks`` (empty
    elsewhere, or when the holder is on another NFS client or in another pid namespace)."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == key:
            pids.append(int(fields[4]))
    return pids


_HOLDER = re.compile(r"pid (\d+) on (\S+?),")


def _holder_text(fd: int, lock_path: Path, writable: bool) -> str:
    """Who holds the lock, for the refusal: the holder's own line, unless that line names a
    process of this machine that has ended (a holder that could not write the file, which
    is read-only, leaves its predecessor's line): then the pid that holds it now, and what
    to do about the file."""
    line = _read_text(fd)
    m = _HOLDER.match(line)
    if m is None or m.group(2) != socket.gethostname() or _running(int(m.group(1))):
        return line
    holders = [p for p in _lock_holders(fd) if p != os.getpid()]
    now = f"pid {', '.join(map(str, holders))} holds the lock" if holders else (
        "a process this machine cannot name holds the lock (on another host, or in another "
        "pid namespace)"
    )  # fmt: skip
    why = " and it is read-only" if not writable else ""
    return (
        f"{now}; the lock file {lock_path} still names {line}, a process that has ended: the "
        f"holder could not record itself{why}. Once no run writes this store, remove "
        f"{lock_path} (or make it writable) so that the next holder is named"
    )


@dataclass(frozen=True)
class LockGuard:
    """The run a writing process works for, checked before each of its writes.

    A process writes a tile of a store only while the run that started it holds the
    store's lock: the run's process is still running and the lock file still holds the
    line it wrote when it took the lock (a later run rewrites it). A worker whose run
    was killed before the worker started (so the parent-death signal never reached it)
    then stops at its first write instead of writing over the next run's tiles.

    Attributes
    ----------
    store : str, the store folder
    pid, host : int, str; the process that holds the lock
    line : str or None
        What that process wrote in the lock file; None when it could not write it (a
        read-only lock file, a file system without locks): only ``pid`` is checked then.
    """

    store: str
    pid: int
    host: str
    line: str | None = None

    def check(self) -> None:
        """Raise unless the run still holds the lock.

        Raises
        ------
        StoreLockedError
            The run's process has ended, or another run holds the lock now.
        """
        if self.line is not None:
            try:
                with open(os.path.join(self.store, LOCK_NAME), "rb") as f:
                    now = f.read(200).decode(errors="replace").strip()
            except OSError:
                now = None
            if now != self.line:
                raise StoreLockedError(
                    f"not writing store {self.store}: the run that started this process "
                    f"({self.line}) no longer holds its lock"
                    f"{f' ({now} does)' if now else ''}"
                )
        if self.host == socket.gethostname() and not _running(self.pid):
            raise StoreLockedError(
                f"not writing store {self.store}: the run that started this process "
                f"(pid {self.pid}) has ended"
            )

"""Seams between the store's lock and the processes that write it: workers of a killed run,
a lock file that names a process long gone, a full disk while a tile grows."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import time
import uuid

import pytest
import zarr
from helpers import ROOT, marked_processes
from test_store_safety import KS, TILES, TRANSFORMS, check_store, expected_arrays, make_inputs

from npa_precompute import pipeline
from npa_precompute.blockwise import DaskOptions
from npa_precompute.readers import file_sha256
from npa_precompute.store import (
    LOCK_NAME,
    LockGuard,
    StoreLock,
    StoreLockedError,
    StoreWriteError,
    list_tiles,
    open_store,
    open_tile,
)


def _children(pid: int) -> list[int]:
    r = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def _wait_gone(marker: str, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        alive = marked_processes(marker)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_while_workers_start_leaves_no_worker_and_no_foreign_tile(tmp_path):
    """10 SIGKILLs of `run --workers 2` while its workers start: none outlives the run by
    more than a few seconds, and the tiles the next run writes stay that run's (a worker of
    the killed run used to go on without the lock and overwrite them)."""
    sets = [make_inputs(tmp_path / n, seed) for n, seed in (("A", 1), ("B", 2))]
    expected = {**expected_arrays(sets[0]), **expected_arrays(sets[1])}
    out = tmp_path / "s.zarr"
    rng = random.Random(18)
    kills = 0
    for trial in range(10):
        inputs, other = sets[trial % 2], sets[1 - trial % 2]
        marker = f"NPALOSS_KILL_TEST={uuid.uuid4().hex}"
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "NPALOSS_KILL_TEST": marker.split("=")[1], "PYTHONPATH": path}
        cmd = [sys.executable, "-m", "npa_precompute", "run", inputs["gt"], "--images",
               inputs["top"], "--out", str(out), "--k", ",".join(map(str, KS)), "--transform",
               TRANSFORMS[0], "--transform", TRANSFORMS[1], "--workers", "2", "--overwrite",
               "-q"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 120
        while proc.poll() is None and not _children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.6))  # somewhere in the workers' start-up
        if proc.poll() is None:
            kills += 1
            proc.kill()
        proc.wait()
        # the next run, right away: its tiles must stay its own
        s = pipeline.run_precompute([other["gt"]], out, images=[other["top"]], ks=KS,
                                    transforms=TRANSFORMS, overwrite=True)  # fmt: skip
        assert s.written == list(TILES)
        survivors = _wait_gone(marker.split("=")[1], 5.0)
        assert not survivors, f"trial {trial}: workers {survivors} outlived their run"
        assert check_store(out, expected) == list(TILES)
        root = open_store(out)
        for tid in TILES:
            src = open_tile(root, tid).meta.source
            want = file_sha256(os.path.join(other["gt"], f"{tid}_noBoundary.tif"))
            assert src["label_sha256"] == want, f"trial {trial}: {tid} was overwritten"
    assert kills >= 8, f"only {kills} of 10 runs were still starting: the test proves little"


def test_a_writer_whose_run_has_ended_writes_nothing(tmp_path):
    """The guard a worker checks before each write: the run's process and its lock line."""
    inputs = make_inputs(tmp_path / "A", 1, shape=(32, 32))
    out = tmp_path / "s.zarr"
    pipeline.run_precompute([inputs["gt"]], out, ks=KS, transforms=TRANSFORMS)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with StoreLock(out) as lock:
        guard = lock.guard
        guard.check()  # held by this process: fine
        gone = LockGuard(guard.store, dead.pid, guard.host, guard.line)
        with pytest.raises(StoreLockedError, match=rf"pid {dead.pid}\) has ended"):
            gone.check()
        with pytest.raises(StoreLockedError, match="no longer holds its lock"):
            LockGuard(guard.store, guard.pid, guard.host, "pid 1 on elsewhere, since 2020").check()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != LOCK_NAME}
    src = next(s for s in pipeline.discover_tiles([inputs["gt"]], None, preset="isprs"))
    cfg = pipeline.PrecomputeConfig(pipeline.get_preset("isprs"), KS)
    with pytest.raises(StoreLockedError):
        pipeline.process_tile(str(out), src, cfg, {"label_path": "x"}, gone)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != LOCK_NAME} == before


def test_refusal_says_the_named_holder_is_gone_and_names_the_real_one(tmp_path):
    """A holder that cannot write the lock file (read-only) leaves its predecessor's line:
    the refusal used to name that long-dead pid as the holder."""
    store = tmp_path / "s.zarr"
    store.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = os.uname().nodename
    (store / LOCK_NAME).write_text(f"pid {dead.pid} on {host}, since 2020-01-01T00:00:00+00:00")
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"  # what StoreLock does with a read-only file
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(store / LOCK_NAME)],
                              stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(StoreLockedError) as info:
            StoreLock(store).acquire()
    finally:
        holder.kill()
        holder.wait()
    msg = str(info.value)
    assert f"pid {holder.pid} holds the lock" in msg
    assert f"still names pid {dead.pid} on {host}" in msg and "has ended" in msg
    assert f"remove {store / LOCK_NAME}" in msg
    StoreLock(store).acquire().release()  # the holder gone: the lock is free again


@pytest.mark.parametrize("dask", [False, True], ids=["in-memory", "dask"])
def test_full_disk_while_growing_names_tile_and_array(tmp_path, monkeypatch, dask):
    inputs = make_inputs(tmp_path / "A", 1)
    out = tmp_path / "s.zarr"
    kw = {"images": [inputs["top"]], "transforms": TRANSFORMS}
    if dask:
        kw.update(chunk=64, dask=DaskOptions(block=64, scheduler="synchronous"))
    pipeline.run_precompute([inputs["gt"]], out, ks=KS, **kw)
    real = zarr.storage.LocalStore.set

    async def full(self, key, value, *a, **k):
        if "tiles/area2/affinity/k5/c/" in f"{self.root}/{key}":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await real(self, key, value, *a, **k)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full)
    with pytest.raises(StoreWriteError) as info:
        pipeline.run_precompute([inputs["gt"]], out, ks=(*KS, 5), **kw)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == (
        f"[Errno 28] No space left on device: writing array 'affinity/k5' of tile 'area2' in "
        f"store {out}"
    )
    root = open_store(out)  # the tile stays complete, with its old arrays
    assert list_tiles(root, complete_only=True) == list(TILES)
    assert open_tile(root, "area2").affinity_ks == list(KS)

"""The store under real conditions: two runs at once, a read-only file system, a full disk,
weights that would overflow their dtype, and the first run's numba compilation."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner
from helpers import ISPRS_PALETTE, ROOT

from npa_precompute import kernel_cache, pipeline
from npa_precompute.affinity import affinity_maps
from npa_precompute.blockwise import DaskOptions
from npa_precompute.cli import main
from npa_precompute.presets import get_preset
from npa_precompute.readers import file_sha256
from npa_precompute.store import (
    LOCK_NAME,
    StoreLockedError,
    StoreWriteError,
    is_consolidated,
    list_tiles,
    open_store,
    open_tile,
)
from npa_precompute.transforms import WeightRangeError, check_weight_range, parse_transform

KS = (2, 8)
TRANSFORMS = ("log10:L=0.5", "norm:L=0.5")
TILES = ("area0", "area1", "area2", "area3")


def _blocky(shape, seed, n=6, block=6):
    rng = np.random.default_rng(seed)
    b = rng.integers(0, n, (shape[0] // block + 1, shape[1] // block + 1))
    return np.kron(b, np.ones((block, block), dtype=int))[: shape[0], : shape[1]]


def make_inputs(folder, seed: int, shape=(160, 192)) -> dict:
    """Four ISPRS tiles (RGB-coded labels with an ignore band, IRRG images) in ``folder``."""
    gt, top = folder / "gt", folder / "top"
    gt.mkdir(parents=True)
    top.mkdir()
    for i, tid in enumerate(TILES):
        idx = _blocky(shape, seed * 10 + i)
        rgb = ISPRS_PALETTE[idx]
        rgb[::9] = 0  # boundary band -> ignore
        tifffile.imwrite(gt / f"{tid}_noBoundary.tif", rgb)
        image = (idx[..., None] * np.array([40, 20, 10]) + seed).astype(np.uint8)
        tifffile.imwrite(top / f"{tid}.tif", image)
    return {"gt": str(gt), "top": str(top)}


def expected_arrays(inputs: dict, ks=KS) -> dict:
    """Every array of every tile for search regions ``ks``, keyed by the label file's sha256."""
    preset = get_preset("isprs")
    out = {}
    for tid in TILES:
        path = os.path.join(inputs["gt"], f"{tid}_noBoundary.tif")
        label = preset.decode(tifffile.imread(path))
        aff = affinity_maps(label, ks)
        ignore = label == 255
        arrays = {
            "label": label,
            "image": tifffile.imread(os.path.join(inputs["top"], f"{tid}.tif")),
        }
        for i, k in enumerate(ks):
            arrays[f"affinity/k{k}"] = aff[i]
            for spec in TRANSFORMS:
                t = parse_transform(spec)
                arrays[f"weights/k{k}_{t.slug}"] = t.apply(aff[i], ignore)
        out[file_sha256(path)] = arrays
    return out


def check_store(out, expected: dict) -> list[str]:
    """Every tile of ``out`` that is marked complete holds exactly the arrays of the input
    its attrs name; returns the complete tiles."""
    root = open_store(out)
    complete = list_tiles(root, complete_only=True)
    for tid in complete:
        tile = open_tile(root, tid)
        src = tile.attrs["source"]
        assert src["label_sha256"] in expected, f"{tid}: attrs name an unknown label"
        want = expected[src["label_sha256"]]
        assert file_sha256(src["image_path"]) == src["image_sha256"]
        names = ["label", "image"] + [f"affinity/k{k}" for k in tile.affinity_ks]
        names += [f"weights/{n}" for n in tile.weight_names]
        assert sorted(names) == sorted(want), f"{tid}: arrays {names}"
        for name in names:
            got = tile.group[name][...]
            assert np.array_equal(got, want[name]), f"{tid}/{name} is not its input's"
    return complete


def _racer(jobs, barrier, results) -> None:
    """One of two processes that start each job at the same moment as the other."""
    from npa_precompute.pipeline import run_precompute
    from npa_precompute.store import StoreLockedError

    for trial, inputs, out in jobs:
        barrier.wait(timeout=120)
        try:
            s = run_precompute([inputs["gt"]], out, images=[inputs["top"]], ks=KS,
                               transforms=TRANSFORMS)  # fmt: skip
            results.put((trial, "ok", f"{len(s.written)} written, {len(s.skipped)} skipped"))
        except StoreLockedError as exc:
            results.put((trial, "locked", str(exc)))
        except BaseException as exc:  # anything else is a failure of the test
            results.put((trial, "error", f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("kind", ["same inputs", "different inputs"])
def test_two_runs_racing_on_one_store(tmp_path, kind):
    """Two processes start `run` on the same --out at the same moment, 12 times over (fresh
    stores and stores whose tiles both runs must rewrite): one writes, the other is refused
    or finds the store current; no complete tile ever holds an array of another input."""
    sets = {n: make_inputs(tmp_path / n, seed) for n, seed in (("A", 1), ("B", 2), ("C", 3))}
    expected = {**expected_arrays(sets["A"]), **expected_arrays(sets["B"])}
    second = sets["A"] if kind == "same inputs" else sets["B"]
    trials = 12
    outs = []
    for trial in range(trials):
        out = tmp_path / f"s{trial}.zarr"
        if trial % 2:  # an existing store of other content: both runs rewrite every tile
            pipeline.run_precompute([sets["C"]["gt"]], out, images=[sets["C"]["top"]], ks=KS,
                                    transforms=TRANSFORMS)  # fmt: skip
        outs.append(str(out))
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = []
    for inp in (sets["A"], second):
        jobs = [(t, inp, outs[t]) for t in range(trials)]
        procs.append(ctx.Process(target=_racer, args=(jobs, barrier, results)))
    for p in procs:
        p.start()
    got = [results.get(timeout=300) for _ in range(2 * trials)]
    for p in procs:
        p.join(timeout=60)
    errors = [g for g in got if g[1] == "error"]
    assert not errors, errors
    locked = 0
    for trial in range(trials):
        outcome = sorted(g[1] for g in got if g[0] == trial)
        assert "ok" in outcome, (trial, outcome)
        locked += outcome.count("locked")
        for g in got:
            if g[0] == trial and g[1] == "locked":
                assert "is being written by another npa-precompute run (pid" in g[2]
        assert check_store(outs[trial], expected) == list(TILES)
    assert locked > 0, "the two runs never overlapped: the test proves nothing"


def _hold_lock(path) -> subprocess.Popen:
    code = (
        "import sys, time\n"
        "from npa_precompute.store import StoreLock\n"
        "StoreLock(sys.argv[1]).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                            cwd=ROOT)  # fmt: skip
    assert proc.stdout.readline().strip() == b"locked"
    return proc


def test_second_writer_refused_and_lock_dies_with_its_process(tmp_path):
    inputs = make_inputs(tmp_path / "A", 1)
    out = tmp_path / "s.zarr"
    args = [inputs["gt"]], out
    kw = {"images": [inputs["top"]], "ks": KS, "transforms": TRANSFORMS}
    pipeline.run_precompute(*args, **kw)

    def stamps():
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != LOCK_NAME}

    before = stamps()
    holder = _hold_lock(out)
    try:
        with pytest.raises(StoreLockedError, match=rf"pid {holder.pid} on .*, since"):
            pipeline.run_precompute(*args, **kw, overwrite=True)
        res = CliRunner().invoke(main, ["run", inputs["gt"], "--out", str(out), "--k", "2,8",
                                        "--overwrite", "-q"])  # fmt: skip
        assert res.exit_code == 1 and "being written by another npa-precompute run" in res.output
        assert "Traceback" not in res.output
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: the kernel drops its lock
        holder.wait()
    assert stamps() == before  # the refused runs wrote nothing
    s = pipeline.run_precompute(*args, **kw, overwrite=True)
    assert s.written == list(TILES)
    # a fresh --out that another run is creating: refused, and left to that run
    fresh = tmp_path / "new.zarr"
    fresh.mkdir()
    holder = _hold_lock(fresh)
    try:
        with pytest.raises(StoreLockedError):
            pipeline.run_precompute([inputs["gt"]], fresh, ks=KS)
        assert sorted(p.name for p in fresh.iterdir()) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()


def test_lock_file_is_invisible_to_zarr_readers(tmp_path):
    import warnings

    inputs = make_inputs(tmp_path / "A", 1)
    out = tmp_path / "s.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zarr's "not recognized as a component" included
        pipeline.run_precompute([inputs["gt"]], out, ks=KS, transforms=TRANSFORMS)
    assert (out / LOCK_NAME).is_file() and is_consolidated(out)
    g = zarr.open_group(out, mode="r")  # the consolidated listing
    assert sorted(g["tiles"].group_keys()) == list(TILES)


# ------------------------------------------------------------------ read-only, full disk


def _populate(tmp_path, dask: bool = False):
    inputs = make_inputs(tmp_path / "A", 1)
    out = tmp_path / "store" / "s.zarr"
    kw = {"images": [inputs["top"]], "ks": KS, "transforms": TRANSFORMS}
    if dask:
        kw.update(chunk=64, dask=DaskOptions(block=64, scheduler="synchronous"))
    s = pipeline.run_precompute([inputs["gt"]], out, **kw)
    assert s.written == list(TILES)
    return inputs, out, kw


def test_up_to_date_run_writes_nothing(tmp_path, monkeypatch):
    """Nothing to do: no consolidation, no write of any kind (what a read-only store needs)."""
    inputs, out, kw = _populate(tmp_path)

    def no_consolidate(path):
        raise AssertionError("re-consolidated a store in which nothing changed")

    async def no_write(self, key, value, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), key)

    monkeypatch.setattr(pipeline, "consolidate_store", no_consolidate)
    monkeypatch.setattr(zarr.storage.LocalStore, "set", no_write)
    s = pipeline.run_precompute([inputs["gt"]], out, **kw)
    assert s.written == [] and s.skipped == list(TILES)


@pytest.fixture
def read_only_mount():
    """Make a folder read-only for root too (a read-only bind mount), if this machine lets us."""
    mounted = []

    def make(path):
        r = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot bind-mount here: {r.stderr.decode().strip()}")
        mounted.append(path)
        r = subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot remount read-only here: {r.stderr.decode().strip()}")
        with pytest.raises(OSError, match="Read-only"):
            (path / "probe").write_text("x")

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("dask", [False, True], ids=["in-memory", "dask"])
def test_up_to_date_store_on_a_read_only_file_system(tmp_path, read_only_mount, dask):
    inputs, out, kw = _populate(tmp_path, dask)
    read_only_mount(out.parent)
    s = pipeline.run_precompute([inputs["gt"]], out, **kw)
    assert s.written == [] and s.skipped == list(TILES)
    dask_args = ["--chunk", "64", "--dask", "--block", "64", "--scheduler", "synchronous"]
    res = CliRunner().invoke(main, ["run", inputs["gt"], "--images", inputs["top"], "--out",
                                    str(out), "--k", "2,8", "--transform", TRANSFORMS[0],
                                    "--transform", TRANSFORMS[1], "-q",
                                    *(dask_args if dask else [])])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "0 tile(s) written, 4 up to date" in res.output


@pytest.mark.parametrize("dask", [False, True], ids=["in-memory", "dask"])
def test_full_disk_names_tile_and_array(tmp_path, monkeypatch, dask):
    inputs = make_inputs(tmp_path / "A", 1)
    real = zarr.storage.LocalStore.set

    async def full(self, key, value, *a, **k):
        if "tiles/area2/weights/k8_log10_L0.5/c/" in f"{self.root}/{key}":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await real(self, key, value, *a, **k)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full)
    out = tmp_path / "s.zarr"
    kw = {"images": [inputs["top"]], "ks": KS, "transforms": TRANSFORMS}
    if dask:
        kw.update(chunk=64, dask=DaskOptions(block=64, scheduler="synchronous"))
    with pytest.raises(StoreWriteError) as info:
        pipeline.run_precompute([inputs["gt"]], out, **kw)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == (
        f"[Errno 28] No space left on device: writing array 'weights/k8_log10_L0.5' of tile "
        f"'area2' in store {out}"
    )
    args = ["run", inputs["gt"], "--out", str(tmp_path / "c.zarr"), "--k", "2,8", "-q"]
    res = CliRunner().invoke(main, args + (["--dask", "--block", "256", "--scheduler",
                                            "synchronous"] if dask else []))  # fmt: skip
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert (
        "Error: [Errno 28] No space left on device: writing array 'weights/k8_log10_L0.5' of "
        "tile 'area2'"
    ) in res.output


# ------------------------------------------------------------------------ weights overflow


@pytest.mark.parametrize(
    ("ks", "transform", "dtype", "message"),
    [
        ("8", "log10:L=400", "float32",
         r"--transform log10:L=400: `L` = 400 is too large for log10: 10\*\*L overflows float64 "
         r"\(L must be below 308\.255\)"),
        ("8", "norm:L=1e39", "float32",
         r"--transform norm:L=1e39: weights reach 1e\+39, above 3\.40282e\+38, the largest "
         r"float32 \(--dtype float32\); L must be at most 3\.40282e\+38"),
        ("8", "norm:L=70000", "float16",
         r"--transform norm:L=70000: weights reach 70001, above 65504, the largest float16 "
         r"\(--dtype float16\); L must be at most 65503 with float16"),
        ("8,128", "raw", "float16",
         r"--transform raw with --k 128: weights reach 66048, above 65504, the largest float16 "
         r"\(--dtype float16\); use --dtype float32, or k <= 127 with float16"),
        ("8", "log:a=1.001,L=70000", "float16",
         r"--transform log:a=1.001,L=70000 with --k 8: weights reach 70000, above 65504"),
    ],
)  # fmt: skip
def test_weights_that_would_overflow_are_a_usage_error(tmp_path, ks, transform, dtype, message):
    inputs = make_inputs(tmp_path / "A", 1, shape=(16, 16))
    out = tmp_path / "s.zarr"
    res = CliRunner().invoke(main, ["run", inputs["gt"], "--out", str(out), "--k", ks,
                                    "--transform", transform, "--dtype", dtype, "-q"])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "Usage: " in res.output
    assert len([ln for ln in res.output.splitlines() if ln.startswith("Error: ")]) == 1
    import re

    assert re.search(message, res.output), res.output
    assert not out.exists()  # checked before anything is written
    with pytest.raises(WeightRangeError):  # the library refuses the same, naming its parameters
        pipeline.run_precompute([inputs["gt"]], out, ks=ks, transforms=[transform],
                                weight_dtype=dtype)  # fmt: skip
    assert not out.exists()


def test_largest_representable_weights_are_accepted(tmp_path):
    check_weight_range((127,), ["raw"], "float16")
    check_weight_range((8,), ["norm:L=65503"], "float16")
    check_weight_range((8, 64), ["log10:L=308", "ln:L=709"], "float32")
    with pytest.raises(WeightRangeError, match=r"transform norm:L=1e39: .*\(`weight_dtype`"):
        check_weight_range((8,), ["norm:L=1e39"], "float32")
    inputs = make_inputs(tmp_path / "A", 1, shape=(40, 40))
    s = pipeline.run_precompute([inputs["gt"]], tmp_path / "s.zarr", ks=(127,),
                                transforms=["raw", "log10:L=300"],
                                weight_dtype="float16")  # fmt: skip
    tile = open_tile(open_store(tmp_path / "s.zarr"), s.written[0])
    for name in ("k127_raw", "k127_log10_L300"):
        assert np.isfinite(tile.weights(name)[...]).all()


# ------------------------------------------------------------------ numba compile message


def test_first_run_says_it_compiles_and_reports_compile_time_apart(tmp_path):
    """With an empty numba cache: one message while the kernels compile, and the compile
    time reported apart from the kernel time; the next run loads them and says nothing."""
    inputs = make_inputs(tmp_path / "A", 1, shape=(64, 64))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    cmd = [sys.executable, "-m", "npa_precompute", "run", inputs["gt"], "--images",
           inputs["top"], "--k", "2,8"]  # fmt: skip
    runs = []
    for i in range(2):
        t0 = time.perf_counter()
        r = subprocess.run([*cmd, "--out", str(tmp_path / f"s{i}.zarr")], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
        runs.append((r, time.perf_counter() - t0))
        assert r.returncode == 0, r.stderr
    (first, first_s), (second, _) = runs
    notice = "Compiling the numba kernels (numba's cache is empty (first run after installing)"
    assert first.stderr.count(notice) == 1, first.stderr
    assert notice not in second.stderr
    import re

    m = re.search(r"affinity kernel ([\d.]+) s summed over tiles; numba kernels compiled in "
                  r"([\d.]+) s: numba's cache is empty \(first run after installing\)",
                  first.stdout)  # fmt: skip
    assert m, first.stdout
    kernel, compile_s = float(m.group(1)), float(m.group(2))
    assert compile_s > 2.0 and kernel < 1.0 and compile_s < first_s
    assert "compiled in" not in second.stdout and "affinity kernel" in second.stdout


def test_compile_reason_tells_empty_stale_and_new_signature(tmp_path):
    import pickle
    from types import SimpleNamespace

    index = tmp_path / "k.nbi"

    def kernel(version="0.1", stamp=(1.0, 10)):
        f = SimpleNamespace(_index_path=str(index), _version=version, _source_stamp=stamp)
        return SimpleNamespace(_cache=SimpleNamespace(_cache_file=f))

    assert kernel_cache.compile_reason([kernel()]).startswith("numba's cache is empty")
    index.write_bytes(pickle.dumps("0.1") + pickle.dumps(((1.0, 10), {})))
    assert kernel_cache.compile_reason([kernel()]).startswith("new input types")
    assert kernel_cache.compile_reason([kernel(stamp=(2.0, 10))]).startswith("the kernels' source")
    assert kernel_cache.compile_reason([kernel(version="0.2")]).startswith("numba was upgraded")
    never = SimpleNamespace(
        _cache=SimpleNamespace(_cache_file=SimpleNamespace(_index_path=str(tmp_path / "n.nbi")))
    )  # a kernel no run has used yet, next to a cached one: not "the cache is empty"
    assert kernel_cache.compile_reason([kernel(), never]).startswith("first use of some kernels")
    assert kernel_cache.compile_reason([object()]) == "reason unknown"
    assert len(kernel_cache.kernel_dispatchers()) >= 3  # numba's layout is the one read


def test_quiet_keeps_the_compile_notice_out(tmp_path, monkeypatch):
    inputs = make_inputs(tmp_path / "A", 1, shape=(16, 16))

    def fake_compile(cfg, notify=None, reason=None):
        if notify is not None:
            notify(f"Compiling the numba kernels ({reason}, ...)")
        return 12.5

    monkeypatch.setattr(pipeline, "compile_kernels", fake_compile)
    monkeypatch.setattr(kernel_cache, "compile_reason", lambda kernels=None: "because")
    for i, quiet in enumerate([False, True]):
        args = ["run", inputs["gt"], "--out", str(tmp_path / f"s{i}.zarr"), "--k", "2"]
        res = CliRunner().invoke(main, args + (["-q"] if quiet else []))
        assert res.exit_code == 0, res.output
        assert ("Compiling the numba kernels" in res.output) is not quiet
        assert "numba kernels compiled in 12.5 s: because" in res.output

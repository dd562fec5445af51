"""Kernel benchmark: ``affinity_maps`` (Eq. 1) against peers, side by side in one run.

Prints a Markdown report to stdout (``--write`` also puts it into ``docs/benchmarks.md``):

* inputs built from the real Vaihingen crop by mirror tiling (a Vaihingen-sized
  2048x2560 tile, a Potsdam-sized 6000x6000 tile), a random 6-class worst case and a
  48-class case with the real boundaries;
* exactness of every peer and every method of ours, checked on a 512x512 real sub-tile
  (and on the full tile for every timed call's warm-up result);
* ours (each ``method``, one thread and all cores, k = 8, 16, 32, 64, one k per call
  and all four in one call) against brute-force Eq. 1, scipy ``uniform_filter``,
  OpenCV ``boxFilter`` and torch ``avg_pool2d``, timed interleaved (round-robin) so that
  the ratios are measured side by side on a shared, noisy machine;
* peak resident memory and first-call JIT latency, each in a fresh subprocess;
* a table of the targets with the measured values, met or not.

Usage::

    python benchmarks/bench_affinity.py [--quick] [--methods auto,columns] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    POTSDAM_SHAPE,
    VAIHINGEN_SHAPE,
    Entry,
    LoadMeter,
    add_write_option,
    fmt,
    machine_rows,
    md_table,
    mirror_tile,
    now,
    real_labels,
    require_data,
    run_interleaved,
    verdict,
    wait_for_quiet,
    write_section,
)

from npa_precompute import affinity_maps
from npa_precompute.affinity import METHODS, dense_labels

KS = (8, 16, 32, 64)
SLOW_KS = (8, 32)  # brute force and torch: cost grows with k**2, run on the sub-tile only
MANY_CLASSES_PER_CLASS = 8  # 6 label values x 8 = 48 classes in the many-class case

OPENCV_U8 = "OpenCV boxFilter u8→u16"
OPENCV_F32 = "OpenCV boxFilter f32"
SCIPY = "scipy uniform_filter"
TORCH = "torch avg_pool2d (one-hot)"
BRUTE = "brute force (numpy shifts)"


def ours(method: str) -> str:
    return f"ours `{method}`"


# -- peers ----------------------------------------------------------------------------------
# Each peer gets the labels already renumbered to 0 .. n-1 (ours does that inside the call)
# and computes, per class c, the box sum of the indicator [label == c] over the
# (2k+1)^2 window with edge replication; a pixel keeps the sum of its own class and
# A = (2k+1)^2 - same-class count.


def _count_dtype(k: int) -> type:
    return np.uint16 if (2 * k + 1) ** 2 <= np.iinfo(np.uint16).max else np.uint32


def _from_box_sums(
    dense: np.ndarray, n_classes: int, k: int, box_sum: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    dt = _count_dtype(k)
    same = np.empty(dense.shape, dtype=dt)
    for c in range(n_classes):
        mask = dense == c
        np.copyto(same, box_sum(mask), where=mask, casting="unsafe")
    return np.subtract(dt((2 * k + 1) ** 2), same, out=same)


def peer_opencv_u8(dense: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """uint8 indicator -> uint16 box sums (exact while (2k+1)^2 <= 65535)."""
    import cv2

    w = 2 * k + 1

    def box(mask: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(
            mask.view(np.uint8),
            cv2.CV_16U,
            (w, w),
            normalize=False,
            borderType=cv2.BORDER_REPLICATE,
        )

    return _from_box_sums(dense, n_classes, k, box)


def peer_opencv_f32(dense: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """float32 indicator -> float32 box sums (the usual way, sums exact below 2**24)."""
    import cv2

    w = 2 * k + 1

    def box(mask: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(
            mask.astype(np.float32),
            -1,
            (w, w),
            normalize=False,
            borderType=cv2.BORDER_REPLICATE,
        )

    return _from_box_sums(dense, n_classes, k, box)


def peer_scipy(dense: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """Separable running means (``mode='nearest'`` = edge replication), rescaled, rounded."""
    from scipy.ndimage import uniform_filter

    w = 2 * k + 1

    def box(mask: np.ndarray) -> np.ndarray:
        s = uniform_filter(mask.view(np.uint8), size=w, mode="nearest", output=np.float32)
        s *= np.float32(w * w)
        return np.rint(s, out=s)

    return _from_box_sums(dense, n_classes, k, box)


def peer_torch(dense: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """One-hot (1, C, H, W) float32, replicate padding, window sums, gather own class."""
    import torch
    import torch.nn.functional as F

    labels = torch.from_numpy(dense.astype(np.int64))
    onehot = F.one_hot(labels, n_classes).permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    padded = F.pad(onehot, (k, k, k, k), mode="replicate")
    sums = F.avg_pool2d(padded, 2 * k + 1, stride=1, divisor_override=1)
    same = sums[0].gather(0, labels.unsqueeze(0))[0].round().to(torch.int32).numpy()
    return ((2 * k + 1) ** 2 - same).astype(_count_dtype(k))


def peer_brute(dense: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """Eq. 1 literally: one shifted comparison per window offset over an edge-padded map."""
    h, w = dense.shape
    padded = np.pad(dense, k, mode="edge")
    out = np.zeros((h, w), dtype=_count_dtype(k))
    for dy in range(2 * k + 1):
        for dx in range(2 * k + 1):
            out += padded[dy : dy + h, dx : dx + w] != dense
    return out


# -- thread settings --------------------------------------------------------------------------
def _threads_setters() -> dict[str, Callable[[int], None]]:
    setters: dict[str, Callable[[int], None]] = {"numba": numba.set_num_threads}
    try:
        import cv2

        setters["cv2"] = cv2.setNumThreads
    except ImportError:
        pass
    try:
        import torch

        setters["torch"] = torch.set_num_threads
    except ImportError:
        pass
    return setters


def _available_peers() -> tuple[dict[str, Callable], list[str]]:
    peers: dict[str, Callable] = {}
    missing = []
    for name, fn, module in (
        (OPENCV_U8, peer_opencv_u8, "cv2"),
        (OPENCV_F32, peer_opencv_f32, "cv2"),
        (SCIPY, peer_scipy, "scipy.ndimage"),
        (TORCH, peer_torch, "torch"),
        (BRUTE, peer_brute, "numpy"),
    ):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{name} ({module} not installed: pip install -e '.[bench]')")
            continue
        peers[name] = fn
    return peers, missing


# -- inputs ---------------------------------------------------------------------------------
def many_class_labels(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Split every label value into ``per_class`` classes along its 8-connected components.

    Component ``j`` of value ``v`` becomes class ``rank(v) + n_values * (j % per_class)``.
    Two 8-neighbours that differed still differ and two that were equal stay equal, so
    every boundary of the real map is kept; only distant same-class regions now differ.
    """
    from scipy import ndimage

    dense, values = dense_labels(labels)
    n = len(values)
    out = dense.astype(np.uint16)
    eight = np.ones((3, 3), dtype=bool)
    for v in range(n):
        comp, _ = ndimage.label(dense == v, structure=eight)
        mask = comp > 0
        out[mask] += (n * ((comp[mask] - 1) % per_class)).astype(np.uint16)
    return out


def build_inputs(quick: bool) -> dict[str, np.ndarray]:
    crop = real_labels()
    tile_shape = (1024, 1280) if quick else VAIHINGEN_SHAPE
    sub = 256 if quick else 512
    tile = mirror_tile(crop, tile_shape)
    rng = np.random.default_rng(0)
    return {
        "vaihingen": tile,
        "sub": np.ascontiguousarray(tile[:sub, :sub]),
        "many": many_class_labels(tile, MANY_CLASSES_PER_CLASS),
        "random": rng.integers(0, 6, size=tile_shape, dtype=np.uint8),
    }


# -- checks ---------------------------------------------------------------------------------
class Mismatch(AssertionError):
    pass


def assert_equal(what: str, got: np.ndarray, want: np.ndarray) -> None:
    got = np.asarray(got)
    if got.shape != want.shape:
        raise Mismatch(f"{what}: shape {got.shape} != expected {want.shape}")
    if not np.array_equal(got.astype(np.int64), want.astype(np.int64)):
        diff = np.argwhere(got.astype(np.int64) != want.astype(np.int64))
        first = tuple(int(i) for i in diff[0])
        raise Mismatch(
            f"{what}: {len(diff)} of {want.size} counts differ from the reference; first at "
            f"{first}: got {got[first]}, expected {want[first]}"
        )


# -- subprocess measurements ----------------------------------------------------------------
_JIT_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
from npa_precompute import affinity_maps
t2 = time.perf_counter()
labels = np.random.default_rng(0).integers(0, 6, size=(256, 256), dtype=np.uint8)
t3 = time.perf_counter()
affinity_maps(labels, (8, 32), method=sys.argv[1])
t4 = time.perf_counter()
affinity_maps(labels, (8, 32), method=sys.argv[1])
t5 = time.perf_counter()
print(json.dumps({"numpy_s": t1 - t0, "import_s": t2 - t1, "first_s": t4 - t3,
                  "second_s": t5 - t4}))
"""

_MEM_CHILD = r"""
import json, re, sys, time
args = json.loads(sys.argv[1])
sys.path.insert(0, args["bench_dir"])
import numpy as np
from _common import mirror_tile, real_labels
from npa_precompute import affinity_maps

def status():
    with open("/proc/self/status") as f:
        text = f.read()
    return {key: int(re.search(rf"^{key}:\s*(\d+) kB", text, re.M).group(1)) * 1024
            for key in ("VmRSS", "VmHWM")}

labels = mirror_tile(real_labels(), tuple(args["shape"]))
affinity_maps(labels[:64, :64], args["ks"], method=args["method"])
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
before = status()
t0 = time.perf_counter()
out = affinity_maps(labels, args["ks"], method=args["method"])
seconds = time.perf_counter() - t0
after = status()
print(json.dumps({"base_rss": before["VmRSS"], "base_peak": before["VmHWM"],
                  "peak": after["VmHWM"], "reset": reset, "out_bytes": out.nbytes,
                  "in_bytes": labels.nbytes, "seconds": seconds}))
"""


def _child(code: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_jit(method: str) -> dict:
    """First call in a new process with a fresh (cold) and then a filled (warm) cache dir."""
    with tempfile.TemporaryDirectory(prefix="npaloss-jit-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        cold = _child(_JIT_CHILD, [method], env)
        files = sum(len(f) for _, _, f in os.walk(cache))
        warm = _child(_JIT_CHILD, [method], env)
    return {"cold": cold, "warm": warm, "cache_files": files}


def measure_memory(method: str, shape: tuple[int, int]) -> dict:
    args = {
        "bench_dir": str(Path(__file__).resolve().parent),
        "shape": list(shape),
        "ks": list(KS),
        "method": method,
    }
    return _child(_MEM_CHILD, [json.dumps(args)])


# -- the benchmark ----------------------------------------------------------------------------
def run(methods: list[str], quick: bool, wait_idle: float, log: Callable[[str], None]) -> str:
    t_start = time.perf_counter()
    require_data()
    n_threads = numba.config.NUMBA_NUM_THREADS
    setters = _threads_setters()
    cv_default = None
    if "cv2" in setters:
        import cv2

        cv_default = cv2.getNumThreads()
    torch_default = None
    if "torch" in setters:
        import torch

        torch_default = torch.get_num_threads()
    peers, missing = _available_peers()
    reps, slow_reps = (3, 3) if quick else (7, 3)
    load_start = os.getloadavg()
    potsdam_shape = (2000, 2000) if quick else POTSDAM_SHAPE

    log("building inputs")
    inputs = build_inputs(quick)
    tile, sub = inputs["vaihingen"], inputs["sub"]
    dense = {name: dense_labels(a) for name, a in inputs.items()}
    ref_method = "columns" if "columns" in methods else methods[0]

    def threads(numba_n: int | None = None, cv_n: int | None = None, torch_n: int | None = None):
        def setup() -> None:
            if numba_n is not None:
                setters["numba"](numba_n)
            if cv_n is not None and "cv2" in setters:
                setters["cv2"](cv_n)
            if torch_n is not None and "torch" in setters:
                setters["torch"](torch_n)

        return setup

    # ---- exactness on the real sub-tile ----
    log("checking exactness on the sub-tile")
    exact_rows = []
    sub_d, sub_n = dense["sub"][0], len(dense["sub"][1])
    sub_ref = {}
    numba.set_num_threads(n_threads)
    for k in KS:
        if BRUTE in peers and k in SLOW_KS:
            sub_ref[k] = peer_brute(sub_d, sub_n, k)
            ref_name = BRUTE
        else:
            sub_ref[k] = affinity_maps(sub, k, method=ref_method)[0]
            ref_name = ours(ref_method)
        for m in methods:
            assert_equal(
                f"{ours(m)} k={k} on the sub-tile", affinity_maps(sub, k, method=m)[0], sub_ref[k]
            )
            exact_rows.append((ours(m), k, ref_name, "equal"))
        threads(1, 1, 1)()
        for name, fn in peers.items():
            if name in (BRUTE, TORCH) and k not in SLOW_KS:
                continue
            if name == BRUTE:
                exact_rows.append((name, k, "(the reference)", "—"))
                continue
            assert_equal(f"{name} k={k} on the sub-tile", fn(sub_d, sub_n, k), sub_ref[k])
            exact_rows.append((name, k, ref_name, "equal"))
        numba.set_num_threads(n_threads)
    all_ref = affinity_maps(sub, KS, method=ref_method)
    for m in methods:
        assert_equal(f"{ours(m)} all k on the sub-tile", affinity_maps(sub, KS, method=m), all_ref)
        exact_rows.append((ours(m), "all four in one call", ours(ref_method), "equal"))

    # ---- references on the full inputs (for the warm-up checks) ----
    refs = {
        name: affinity_maps(inputs[name], KS, method=ref_method)
        for name in ("vaihingen", "many", "random")
    }

    def check(what: str, want: np.ndarray) -> Callable[[object], None]:
        def _check(got: object) -> None:
            got = np.asarray(got)
            assert_equal(what, got[0] if got.ndim == 3 and want.ndim == 2 else got, want)

        return _check

    results: dict[tuple, Entry] = {}

    load: dict[str, float] = {}

    def add(group: str, entries: list[Entry]) -> None:
        waited = wait_for_quiet(wait_idle)
        if waited > 1.5:
            log(f"waited {waited:.0f} s for other processes to calm down")
        meter = LoadMeter().start()
        run_interleaved(entries)
        load[group] = meter.stop()
        for e in entries:
            results[e.key] = e

    # ---- main groups: Vaihingen-sized tile, one k per call and all four ----
    d_tile, n_tile = dense["vaihingen"][0], len(dense["vaihingen"][1])
    tile_name = "×".join(map(str, tile.shape))
    peer_threads = [(1, "1")]
    if cv_default is not None and cv_default != 1:
        peer_threads.append((cv_default, str(cv_default)))
    for k in (*KS, "all"):
        log(f"timing the Vaihingen-sized tile, k = {k}")
        ks = KS if k == "all" else (k,)
        want = refs["vaihingen"] if k == "all" else refs["vaihingen"][KS.index(k)]
        entries = []
        for m in methods:
            for th in sorted({1, n_threads}):
                entries.append(
                    Entry(
                        ("main", ours(m), th, k),
                        lambda m=m, ks=ks: affinity_maps(tile, ks, method=m),
                        tile.size,
                        reps,
                        threads(th),
                        check(f"{ours(m)} k={k}", want),
                    )
                )
        if k != "all":
            for name in (OPENCV_U8, OPENCV_F32):
                if name not in peers:
                    continue
                for th, _ in peer_threads:
                    entries.append(
                        Entry(
                            ("main", name, th, k),
                            lambda fn=peers[name], k=k: fn(d_tile, n_tile, k),
                            tile.size,
                            reps,
                            threads(None, th),
                            check(f"{name} k={k}", want),
                        )
                    )
            if SCIPY in peers:
                entries.append(
                    Entry(
                        ("main", SCIPY, 1, k),
                        lambda k=k: peer_scipy(d_tile, n_tile, k),
                        tile.size,
                        slow_reps,
                        None,
                        check(f"{SCIPY} k={k}", want),
                    )
                )
            for name in (TORCH, BRUTE):
                if name in peers and k in SLOW_KS:
                    entries.append(
                        Entry(
                            ("main", name, 1, k),
                            lambda fn=peers[name], k=k: fn(sub_d, sub_n, k),
                            sub.size,
                            slow_reps,
                            threads(None, None, 1),
                            check(f"{name} k={k} (sub-tile)", sub_ref[k]),
                        )
                    )
        add(f"{tile_name}, " + (f"k = {k}" if k != "all" else "all four k"), entries)

    # ---- inputs: real 6-class vs 48-class vs random, k = 32, one thread ----
    log("timing the many-class and random inputs")
    entries = []
    for name in ("vaihingen", "many", "random"):
        a = inputs[name]
        want = refs[name][KS.index(32)]
        for m in methods:
            entries.append(
                Entry(
                    ("inputs", ours(m), 1, name),
                    lambda a=a, m=m: affinity_maps(a, 32, method=m),
                    a.size,
                    reps,
                    threads(1),
                    check(f"{ours(m)} {name} k=32", want),
                )
            )
        if OPENCV_U8 in peers:
            d, n = dense[name][0], len(dense[name][1])
            entries.append(
                Entry(
                    ("inputs", OPENCV_U8, 1, name),
                    lambda d=d, n=n: peer_opencv_u8(d, n, 32),
                    a.size,
                    reps,
                    threads(None, 1),
                    check(f"{OPENCV_U8} {name} k=32", want),
                )
            )
    add("48 classes, random, real, k = 32", entries)

    # ---- Potsdam-sized tile, all four k in one call ----
    log(f"timing the Potsdam-sized tile {potsdam_shape}")
    big = mirror_tile(real_labels(), potsdam_shape)
    big_ref = affinity_maps(big, KS, method=ref_method)
    entries = []
    for m in methods:
        for th in sorted({1, n_threads}):
            entries.append(
                Entry(
                    ("potsdam", ours(m), th),
                    lambda m=m: affinity_maps(big, KS, method=m),
                    big.size,
                    3,
                    threads(th),
                    check(f"{ours(m)} Potsdam-sized all k", big_ref),
                )
            )
    add("Potsdam-sized, all four k", entries)
    big = big_ref = None  # free the tile (the timed lambdas hold it by closure)

    # restore thread settings
    numba.set_num_threads(n_threads)
    if cv_default is not None:
        setters["cv2"](cv_default)
    if torch_default is not None:
        setters["torch"](torch_default)
    layer = numba.threading_layer()

    # ---- memory and JIT in fresh processes ----
    mem = {}
    jit = {}
    for m in methods:
        log(f"peak memory, method {m}")
        mem[m] = measure_memory(m, potsdam_shape)
        log(f"JIT latency, method {m}")
        jit[m] = measure_jit(m)

    elapsed = time.perf_counter() - t_start
    return report(
        methods=methods,
        results=results,
        exact_rows=exact_rows,
        inputs=inputs,
        refs=refs,
        mem=mem,
        jit=jit,
        n_threads=n_threads,
        cv_default=cv_default,
        layer=layer,
        quick=quick,
        reps=(reps, slow_reps),
        potsdam_shape=potsdam_shape,
        missing=missing,
        elapsed=elapsed,
        ref_method=ref_method,
        load_start=load_start,
        load=load,
    )


# -- the report -----------------------------------------------------------------------------
def report(
    *,
    methods,
    results,
    exact_rows,
    inputs,
    refs,
    mem,
    jit,
    n_threads,
    cv_default,
    layer,
    quick,
    reps,
    potsdam_shape,
    missing,
    elapsed,
    ref_method,
    load_start,
    load,
) -> str:
    tile = inputs["vaihingen"]
    sub = inputs["sub"]
    th_n = n_threads
    judge = methods[0]

    def r(*key) -> Entry | None:
        return results.get(key)

    def mpix(*key) -> str:
        e = r(*key)
        return fmt(e.mpix_s) if e else "—"

    def shape(a) -> str:
        return "×".join(str(s) for s in a.shape)

    out = []
    cmd = "python benchmarks/bench_affinity.py" + (" --quick" if quick else "")
    if methods != list(METHODS):
        cmd += " --methods " + ",".join(methods)
    out.append("## Kernel benchmark (`benchmarks/bench_affinity.py`)\n")
    out.append(
        f"`{cmd}`, {now()}, {elapsed:.0f} s. Times are medians of {reps[0]} calls "
        f"({reps[1]} for scipy, torch and brute force, 3 on the Potsdam-sized tile) after "
        "one untimed warm-up call; the implementations of a table were timed round-robin "
        "in the same minutes, so read the **ratios**: absolute numbers drift with the "
        "load of this shared machine. Mpix/s = label pixels per second (for all four k: "
        "pixels per call that returns four maps). Timing excludes nothing inside the call "
        "(ours renumbers the labels and allocates its output inside `affinity_maps`); "
        "the peers are handed labels already renumbered to 0..n-1."
        + (" **Quick run: smaller inputs, not for the record.**" if quick else "")
        + "\n"
    )
    out.append("### Machine\n")
    out.append(
        md_table(
            ["", ""],
            machine_rows(
                load_start,
                [
                    ("numba threads (all cores)", f"{th_n}, threading layer {layer}"),
                    ("OpenCV default threads", str(cv_default)),
                ],
            ),
            "ll",
        )
        + "\n"
    )

    busy = max(load.values()) if load else float("nan")
    noisy = ": **noisy run, read the thread scaling with care**" if busy > 0.5 else ""
    out.append(
        "Cores kept busy by other processes while each group was timed (from `/proc/stat` "
        f"minus this process){noisy}:\n"
    )
    out.append(
        md_table(
            ["timed group", "other processes, cores busy on average"],
            [(g, fmt(v)) for g, v in load.items()],
        )
        + "\n"
    )

    # inputs
    out.append("### Inputs\n")
    rows = []
    descr = {
        "vaihingen": "real Vaihingen labels (eroded, 5 classes + ignore 255), mirror-tiled",
        "sub": "top-left corner of the tile above (= the real crop)",
        "many": f"the tile above, each value split along its 8-connected components into "
        f"{MANY_CLASSES_PER_CLASS} classes: same boundaries, more classes",
        "random": "uniform random labels 0..5 (seed 0), no spatial coherence: worst case",
    }
    for name in ("vaihingen", "sub", "many", "random"):
        a = inputs[name]
        n = len(np.unique(a))
        if name in refs:
            frac = f"{100 * float(np.mean(refs[name][0] > 0)):.1f} %"
        else:
            frac = "—"
        rows.append((name, shape(a), n, frac, descr[name]))
    rows.append(
        (
            "potsdam",
            "×".join(map(str, potsdam_shape)),
            len(np.unique(inputs["vaihingen"])),
            "—",
            "real labels mirror-tiled (memory and large-tile throughput)",
        )
    )
    out.append(
        md_table(["input", "shape", "classes", "pixels with A > 0 at k = 8", "what"], rows, "llrrl")
        + "\n"
    )

    # exactness
    out.append("### Exactness\n")
    out.append(
        f"Every implementation was compared with a reference on the {shape(sub)} real "
        "sub-tile (brute-force Eq. 1 where it ran, else ours); in addition the untimed "
        "warm-up result of every timed call below was compared with ours "
        f"(`{ref_method}`) on its full input. "
        "All equal, or the run would have stopped.\n"
    )
    grouped: dict[str, list] = {}
    for name, k, ref_name, res in exact_rows:
        grouped.setdefault(name, []).append((k, ref_name, res))
    rows = [
        (
            name,
            ", ".join(str(k) for k, _, _ in v),
            ", ".join(sorted({rn for _, rn, _ in v})),
            "equal",
        )
        for name, v in grouped.items()
    ]
    out.append(md_table(["implementation", "k", "compared with", "result"], rows, "llll") + "\n")
    if missing:
        out.append("Peers not run: " + "; ".join(missing) + ".\n")

    # main table
    out.append(f"### Throughput, Vaihingen-sized {shape(tile)} real-label tile, one k per call\n")
    out.append(
        f"Mpix/s. Torch and brute force ran on the {shape(sub)} sub-tile at k = 8 and 32 "
        "(their cost grows with k², full tiles would take minutes) and are extrapolated per "
        "pixel. Last column: how many times faster ours "
        f"(`{judge}`, one thread) is at k = 32.\n"
    )
    base = r("main", ours(judge), 1, 32)
    rows = []
    labels_order = []
    for m in methods:
        for th in sorted({1, th_n}):
            labels_order.append((ours(m), th))
    for name in (OPENCV_U8, OPENCV_F32):
        for th in sorted({1, cv_default or 1}):
            labels_order.append((name, th))
    labels_order += [(SCIPY, 1), (TORCH, 1), (BRUTE, 1)]
    for name, th in labels_order:
        if not any(r("main", name, th, k) for k in KS):
            continue
        e32 = r("main", name, th, 32)
        ratio = fmt(base.mpix_s / e32.mpix_s) + "×" if (base and e32) else "—"
        ms = fmt(1e3 * e32.seconds * tile.size / e32.pixels) if e32 else "—"
        rows.append(
            (
                name,
                th,
                *(mpix("main", name, th, k) for k in KS),
                mpix("main", name, th, "all"),
                ms,
                ratio,
            )
        )
    out.append(
        md_table(
            [
                "implementation",
                "threads",
                *(f"k={k}" for k in KS),
                "all four k, one call",
                "ms per tile at k=32",
                f"ours `{judge}` 1 thread ÷ this",
            ],
            rows,
        )
        + "\n"
    )

    # k dependence
    out.append("### Cost against k (ours)\n")
    rows = []
    for m in methods:
        for th in sorted({1, th_n}):
            t = {k: r("main", ours(m), th, k).seconds for k in (*KS, "all")}
            rows.append(
                (
                    ours(m),
                    th,
                    *(fmt(1e3 * t[k]) for k in (*KS, "all")),
                    fmt(t[64] / t[8]),
                    fmt(t["all"] / t[32]),
                )
            )
    out.append(
        md_table(
            [
                "method",
                "threads",
                *(f"ms k={k}" for k in KS),
                "ms all four",
                "time(k=64) / time(k=8)",
                "time(all four) / time(k=32)",
            ],
            rows,
        )
        + "\n"
    )

    # threads
    if th_n > 1:
        out.append(f"### One thread against all {th_n} cores (ours)\n")
        rows = []
        for m in methods:
            for k in (32, "all"):
                e1, en = r("main", ours(m), 1, k), r("main", ours(m), th_n, k)
                rows.append(
                    (
                        ours(m),
                        "all four" if k == "all" else k,
                        fmt(e1.mpix_s),
                        fmt(en.mpix_s),
                        fmt(e1.seconds / en.seconds) + "×",
                    )
                )
        out.append(
            md_table(
                ["method", "k", "Mpix/s, 1 thread", f"Mpix/s, {th_n} threads", "speed-up"], rows
            )
            + "\n"
        )

    # inputs
    out.append("### Label statistics: real 6 values, 48 classes, random (k = 32, one thread)\n")
    out.append(
        "Mpix/s, timed round-robin in one group. Ratios are time ÷ time of the real "
        "6-value tile of the same implementation.\n"
    )
    rows = []
    for name in [ours(m) for m in methods] + [OPENCV_U8]:
        e = {i: r("inputs", name, 1, i) for i in ("vaihingen", "many", "random")}
        if not all(e.values()):
            continue
        rows.append(
            (
                name,
                *(fmt(e[i].mpix_s) for i in ("vaihingen", "many", "random")),
                fmt(e["many"].seconds / e["vaihingen"].seconds) + "×",
                fmt(e["random"].seconds / e["vaihingen"].seconds) + "×",
            )
        )
    n_many = len(np.unique(inputs["many"]))
    out.append(
        md_table(
            [
                "implementation",
                "real (6 values)",
                f"many ({n_many} classes)",
                "random (6)",
                "many ÷ real",
                "random ÷ real",
            ],
            rows,
        )
        + "\n"
    )

    # Potsdam and memory
    ps = "×".join(map(str, potsdam_shape))
    out.append(f"### Potsdam-sized {ps} tile, all four k in one call: time and peak memory\n")
    out.append(
        "Peak memory: a fresh process builds the input and warms the kernels up on a 64×64 "
        "corner, resets its resident-set high-water mark (`echo 5 > /proc/self/clear_refs`), "
        "takes its resident set `VmRSS`, calls `affinity_maps` once (all "
        f"{th_n} threads) and reads the high-water mark `VmHWM` (`/proc/self/status`). "
        "The difference is the call's peak extra memory, output included, compared with "
        "the bytes of the array it returns. `tracemalloc` does not see numba's allocations, "
        "and `ru_maxrss` keeps the parent's high-water mark across fork + exec, hence "
        "`VmHWM`. Slack: how far the high-water mark stood above the resident set before "
        "the call (0 when the reset worked; a peak below it would go unseen).\n"
    )
    rows = []
    for m in methods:
        e1, en = r("potsdam", ours(m), 1), r("potsdam", ours(m), th_n)
        mm = mem[m]
        extra = mm["peak"] - mm["base_rss"]
        rows.append(
            (
                ours(m),
                fmt(e1.seconds),
                fmt(en.seconds),
                fmt(e1.mpix_s),
                fmt(en.mpix_s),
                fmt(extra / 2**20),
                fmt(mm["out_bytes"] / 2**20),
                fmt(extra / mm["out_bytes"]),
                fmt((mm["base_peak"] - mm["base_rss"]) / 2**20),
            )
        )
    out.append(
        md_table(
            [
                "method",
                "s, 1 thread",
                f"s, {th_n} threads",
                "Mpix/s, 1 thread",
                f"Mpix/s, {th_n} threads",
                "peak extra MiB",
                "returned MiB",
                "peak ÷ returned",
                "slack MiB",
            ],
            rows,
        )
        + "\n"
    )

    # JIT
    out.append("### First-call latency (JIT)\n")
    out.append(
        "A new process imports numpy, then `npa_precompute`, then calls `affinity_maps` "
        "on a 256×256 random 6-class map with k = (8, 32), twice. Cold: `NUMBA_CACHE_DIR` "
        "set to a fresh empty folder (compiles and writes the cache); warm: a second "
        "process on the same folder (loads the compiled kernels).\n"
    )
    rows = []
    for m in methods:
        j = jit[m]
        rows.append(
            (
                ours(m),
                fmt(j["cold"]["import_s"]),
                fmt(j["cold"]["first_s"]),
                fmt(j["warm"]["import_s"]),
                fmt(j["warm"]["first_s"]),
                fmt(j["warm"]["second_s"]),
                j["cache_files"],
            )
        )
    out.append(
        md_table(
            [
                "method",
                "import s (cold)",
                "first call s, cold cache",
                "import s (warm)",
                "first call s, warm cache",
                "second call s",
                "files in cache dir",
            ],
            rows,
        )
        + "\n"
    )

    # targets: built last, printed right after the machine table
    n_before = len(out)
    out.append("### Targets\n")
    out.append(
        f"Measured for each method; the verdict is judged on `{judge}` "
        f"({'the default' if judge == 'auto' else 'first of --methods'}). Single-thread, "
        f"{shape(tile)} real-label tile, k = 32, one k per call unless said otherwise.\n"
    )

    def m1(m, k=32, th=1):
        return r("main", ours(m), th, k)

    def per(fn) -> dict[str, float]:
        vals = {}
        for m in methods:
            try:
                vals[m] = fn(m)
            except (AttributeError, TypeError, KeyError, ZeroDivisionError):
                vals[m] = float("nan")
        return vals

    def peer_ratio(name: str, th: int = 1):
        return lambda m: m1(m).mpix_s / r("main", name, th, 32).mpix_s

    targets: list[tuple[str, dict[str, float], str, Callable[[float], bool] | None, str]] = []
    targets.append(
        ("single thread Mpix/s", per(lambda m: m1(m).mpix_s), "≥ 400", lambda v: v >= 400, "")
    )
    best_cv = None
    for name in (OPENCV_U8, OPENCV_F32):
        e = r("main", name, 1, 32)
        if e and (best_cv is None or e.mpix_s > r("main", best_cv, 1, 32).mpix_s):
            best_cv = name
    for name in (OPENCV_U8, OPENCV_F32):
        if r("main", name, 1, 32):
            tag = " (fastest OpenCV variant)" if name == best_cv else ""
            targets.append(
                (f"÷ {name}, 1 thread{tag}", per(peer_ratio(name)), "≥ 7×", lambda v: v >= 7, "×")
            )
    if r("main", SCIPY, 1, 32):
        targets.append((f"÷ {SCIPY}", per(peer_ratio(SCIPY)), "≥ 50×", lambda v: v >= 50, "×"))
    if r("main", BRUTE, 1, 32):
        targets.append(
            (f"÷ {BRUTE} (per pixel)", per(peer_ratio(BRUTE)), "≥ 1000×", lambda v: v >= 1000, "×")
        )
    targets.append(
        (
            "flat in k: time(k=64) ÷ time(k=8)",
            per(lambda m: m1(m, 64).seconds / m1(m, 8).seconds),
            "≤ 1.3",
            lambda v: v <= 1.3,
            "",
        )
    )
    targets.append(
        (
            "all four k in one call ÷ one k (k=32)",
            per(lambda m: m1(m, "all").seconds / m1(m).seconds),
            "≤ 2.5",
            lambda v: v <= 2.5,
            "",
        )
    )
    if th_n > 1:
        targets.append(
            (
                f"{th_n} cores ÷ 1 thread, throughput",
                per(lambda m: m1(m).seconds / m1(m, th=th_n).seconds),
                "≥ 1.8×",
                lambda v: v >= 1.8,
                "×",
            )
        )
    targets.append(
        (
            f"{n_many} classes ÷ 6-value real tile, time",
            per(
                lambda m: (
                    r("inputs", ours(m), 1, "many").seconds
                    / r("inputs", ours(m), 1, "vaihingen").seconds
                )
            ),
            "≤ 2×",
            lambda v: v <= 2,
            "×",
        )
    )
    targets.append(
        (
            "random labels ÷ real tile, time (worst case)",
            per(
                lambda m: (
                    r("inputs", ours(m), 1, "random").seconds
                    / r("inputs", ours(m), 1, "vaihingen").seconds
                )
            ),
            "stated",
            None,
            "×",
        )
    )
    targets.append(
        (
            f"peak memory ÷ returned bytes, {ps}, 4 k",
            per(lambda m: (mem[m]["peak"] - mem[m]["base_rss"]) / mem[m]["out_bytes"]),
            "≤ 2",
            lambda v: v <= 2,
            "",
        )
    )
    targets.append(
        (
            "first call, new process, warm cache, s",
            per(lambda m: jit[m]["warm"]["first_s"]),
            "< 1 s",
            lambda v: v < 1,
            "",
        )
    )
    targets.append(
        (
            "kernels cached on disk (files written by the cold run)",
            per(lambda m: jit[m]["cache_files"]),
            "> 0",
            lambda v: v > 0,
            "",
        )
    )
    rows = []
    for label, vals, thr, ok, unit in targets:
        v = vals.get(judge, float("nan"))
        rows.append(
            (
                label,
                *(fmt(vals[m]) + unit for m in methods),
                thr,
                verdict(None if ok is None else (v == v and ok(v))),
            )
        )
    out.append(
        md_table(
            ["target", *(f"`{m}`" for m in methods), "target", f"verdict (`{judge}`)"],
            rows,
            "l" + "r" * (len(methods) + 1) + "l",
        )
        + "\n"
    )
    targets_md = out[n_before:]
    del out[n_before:]
    at = out.index("### Inputs\n")
    out[at:at] = targets_md
    return "\n".join(out)


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise argparse.ArgumentTypeError(
            f"`--methods` must be a comma-separated subset of {', '.join(METHODS)}, got {text!r}"
        )
    return list(dict.fromkeys(methods))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller inputs and fewer repeats: a smoke run of about a minute",
    )
    parser.add_argument(
        "--methods",
        type=parse_methods,
        default=list(METHODS),
        help=f"methods of ours, comma-separated (default {','.join(METHODS)})",
    )
    add_write_option(parser)
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=20.0,
        metavar="S",
        help="before each timed group, wait up to S seconds (default 20) until other "
        "processes keep less than a quarter of a core busy",
    )
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[bench_affinity {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    try:
        text = run(args.methods, args.quick, args.wait_idle, log)
    except Mismatch as exc:
        print(f"exactness check failed, no timings reported: {exc}", file=sys.stderr)
        return 1
    print(text)
    if args.write:
        write_section(Path(args.write), "bench_affinity", text)
        log(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

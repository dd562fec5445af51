"""Helpers shared by the benchmark scripts: inputs, timing, machine description, Markdown.

Inputs are built from the real Vaihingen crop in ``../shared/data`` (override with the
``NPALOSS_SHARED_DATA`` environment variable, as the tests do) by deterministic mirror
tiling, so every size keeps the spatial statistics of real ground truth.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NPALOSS_SHARED_DATA", ROOT.parent / "shared" / "data"))
VAIHINGEN = SHARED_DATA / "vaihingen_crop"
REAL_LABEL = VAIHINGEN / "gts_eroded_for_participants" / "top_mosaic_09cm_area1_noBoundary.tif"
REAL_IMAGE = VAIHINGEN / "top" / "top_mosaic_09cm_area1.tif"

#: Tile sizes named after the datasets they imitate (rows, columns).
VAIHINGEN_SHAPE = (2048, 2560)
POTSDAM_SHAPE = (6000, 6000)


def require_data() -> None:
    """Exit with a clear message when the real crop is missing."""
    for p in (REAL_LABEL, REAL_IMAGE):
        if not p.is_file():
            sys.exit(
                f"benchmark input {p} not found; point NPALOSS_SHARED_DATA at the folder "
                "holding vaihingen_crop/"
            )


def read_tiff(path: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


def real_rgb_label() -> np.ndarray:
    """The 512x512 RGB-coded eroded Vaihingen ground truth crop."""
    return read_tiff(REAL_LABEL)


def real_image() -> np.ndarray:
    """The 512x512 IRRG Vaihingen image crop."""
    return read_tiff(REAL_IMAGE)


def real_labels() -> np.ndarray:
    """The crop decoded by the ``isprs`` preset: uint8 class indices, 255 = ignore."""
    from npa_precompute.presets import get_preset

    return get_preset("isprs").decode(real_rgb_label())


def mirror_index(n: int, size: int, offset: int = 0) -> np.ndarray:
    """Indices ``0 .. n-1`` that mirror-tile an axis of length ``n`` out to ``size``.

    The pattern is ``0 1 .. n-1 n-1 .. 1 0 0 1 ..`` (period ``2n``), started at ``offset``,
    so neighbouring copies meet at a mirror seam and no new edge is created.
    """
    j = (np.arange(size, dtype=np.int64) + offset) % (2 * n)
    return np.where(j < n, j, 2 * n - 1 - j)


def mirror_tile(
    a: np.ndarray, shape: tuple[int, int], offset: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """Mirror-tile the first two axes of ``a`` to ``shape`` (deterministic, contiguous)."""
    rows = mirror_index(a.shape[0], shape[0], offset[0])
    cols = mirror_index(a.shape[1], shape[1], offset[1])
    return np.ascontiguousarray(a[np.ix_(rows, cols)])


def write_mirror_tiff(
    path: Path,
    src: np.ndarray,
    shape: tuple[int, int],
    *,
    tile: int = 256,
    georef: dict | None = None,
    compression: str = "zlib",
) -> Path:
    """Write ``src`` mirror-tiled to ``shape`` as a tiled (Big)TIFF, one TIFF tile at a time.

    The raster is never in memory whole: tifffile pulls the tiles from a generator,
    so rasters far larger than memory can be made. ``georef`` (see
    :mod:`npa_precompute.geo`) adds GeoTIFF tags.
    """
    import tifffile

    from npa_precompute.geo import geotiff_extratags

    h, w = shape

    def tiles():
        for r in range(0, h, tile):
            for c in range(0, w, tile):
                block = mirror_tile(src, (tile, tile), (r, c))
                yield block  # tifffile crops tiles beyond the raster edge

    bands = src.shape[2:]
    tifffile.imwrite(
        path,
        tiles(),
        shape=(h, w, *bands),
        dtype=src.dtype,
        tile=(tile, tile),
        compression=compression,
        photometric="rgb" if bands == (3,) else "minisblack",
        bigtiff=h * w * max(1, int(np.prod(bands))) * src.dtype.itemsize > 2**31,
        extratags=geotiff_extratags(georef),
    )
    return path


# -- timing ---------------------------------------------------------------------------------
@dataclass
class Entry:
    """One implementation timed inside an interleaved group.

    ``setup`` runs before every call, outside the timed region (thread settings).
    ``check`` receives the result of the untimed warm-up call.
    """

    key: tuple
    fn: Callable[[], object]
    pixels: int
    repeats: int = 5
    setup: Callable[[], None] | None = None
    check: Callable[[object], None] | None = None
    times: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)

    @property
    def mpix_s(self) -> float:
        return self.pixels / self.seconds / 1e6


def run_interleaved(entries: Sequence[Entry]) -> None:
    """Time entries round-robin: one untimed warm-up each, then ``repeats`` timed calls.

    Interleaving puts the implementations of a group side by side in time, so the
    drift of a shared, noisy machine affects all of them alike and their ratios hold.
    """
    for e in entries:
        if e.setup:
            e.setup()
        result = e.fn()
        if e.check:
            e.check(result)
        del result
    for _ in range(max(e.repeats for e in entries)):
        for e in entries:
            if len(e.times) >= e.repeats:
                continue
            if e.setup:
                e.setup()
            t0 = time.perf_counter()
            result = e.fn()
            e.times.append(time.perf_counter() - t0)
            del result


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its reaped children."""
    import resource

    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class LoadMeter:
    """Average number of cores that *other* processes kept busy between start and stop.

    Reads the machine's busy time from ``/proc/stat`` (user, nice, system, irq, softirq
    and steal) and subtracts this process's own CPU time (and its reaped children's).
    A value near the core count means the timings of that stretch were taken on a
    machine already full; NaN where ``/proc/stat`` is missing.
    """

    def __init__(self) -> None:
        self._t0 = self._busy0 = self._own0 = 0.0

    @staticmethod
    def _busy() -> float:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return float("nan")
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def start(self) -> LoadMeter:
        self._t0, self._busy0, self._own0 = time.perf_counter(), self._busy(), cpu_seconds()
        return self

    def stop(self) -> float:
        wall = time.perf_counter() - self._t0
        other = (self._busy() - self._busy0) - (cpu_seconds() - self._own0)
        return max(other, 0.0) / wall if wall > 0 else float("nan")


def wait_for_quiet(max_wait: float, threshold: float = 0.25, window: float = 1.0) -> float:
    """Wait until other processes keep fewer than ``threshold`` cores busy over ``window`` s.

    Gives up after ``max_wait`` seconds; returns the seconds waited.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait:
        meter = LoadMeter().start()
        time.sleep(window)
        if not meter.stop() >= threshold:
            break
    return time.perf_counter() - t0


# -- machine --------------------------------------------------------------------------------
def _cpu_model() -> str:
    """Model name from ``lscpu`` with family/model, SIMD level, caches and hypervisor."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    info = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in out.splitlines())
    )
    name = info.get("Model name")
    if not name:
        try:
            m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
            name = m.group(1).strip() if m else None
        except OSError:
            name = None
    name = name or platform.processor() or "unknown"
    details = []
    if "CPU family" in info:
        details.append(f"family {info['CPU family']} model {info.get('Model', '?')}")
    flags = info.get("Flags", "").split()
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    if simd:
        details.append(simd)
    for level in ("L2", "L3"):
        if f"{level} cache" in info:
            details.append(f"{level} {info[f'{level} cache'].split(' (')[0]}")
    if "Hypervisor vendor" in info:
        details.append(f"{info['Hypervisor vendor']} guest")
    return f"{name} ({', '.join(details)})" if details else name


def _mem_total_gib() -> float:
    try:
        text = Path("/proc/meminfo").read_text()
        m = re.search(r"^MemTotal:\s*(\d+) kB", text, re.MULTILINE)
        if m:
            return int(m.group(1)) / 2**20
    except OSError:
        pass
    return float("nan")


def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError:
        return "not installed"
    return str(getattr(mod, "__version__", "?"))


def machine_rows(
    load_start: Sequence[float], extra: Sequence[tuple[str, str]] = ()
) -> list[tuple[str, str]]:
    """(item, value) rows describing the machine, its load and the library versions."""
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def load(values: Sequence[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in values)

    libs = ", ".join(
        f"{name} {_version(mod)}"
        for name, mod in (
            ("numpy", "numpy"),
            ("numba", "numba"),
            ("zarr", "zarr"),
            ("scipy", "scipy"),
            ("opencv", "cv2"),
            ("torch", "torch"),
        )
    )
    import npa_precompute

    return [
        ("CPU", _cpu_model()),
        ("cores usable", str(ncpu)),
        ("memory", f"{_mem_total_gib():.1f} GiB"),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("libraries", libs),
        ("npaloss", npa_precompute.__version__),
        (
            "load average (1, 5, 15 min) at start / end",
            f"{load(load_start)} / {load(os.getloadavg())}",
        ),
        *extra,
    ]


def now() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


# -- Markdown -------------------------------------------------------------------------------
def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A Markdown table; ``align`` holds one of ``l``/``r`` per column (default: l, then r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    marks = [":--" if a == "l" else "--:" for a in align]
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(x: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, no exponent for everyday magnitudes."""
    if isinstance(x, (int, np.integer)):
        return f"{x:,}"
    if x != x:
        return "n/a"
    if x == 0:
        return "0"
    mag = abs(x)
    if mag >= 10 ** (digits - 1):
        return f"{x:,.0f}"
    decimals = digits - 1 - int(np.floor(np.log10(mag)))
    return f"{x:.{max(decimals, 0)}f}"


def verdict(ok: bool | None) -> str:
    return "stated" if ok is None else ("**met**" if ok else "**not met**")


def add_write_option(parser, doc: str = "benchmarks.md") -> None:
    """``--write [PATH]``: also write the report into PATH (default ``docs/<doc>``)."""
    parser.add_argument(
        "--write",
        nargs="?",
        const=ROOT / "docs" / doc,
        type=Path,
        default=None,
        metavar="PATH",
        help=f"also write the report into PATH (default docs/{doc}), replacing this "
        "script's section",
    )


def write_section(path: Path, name: str, text: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path``.

    The markers are appended when missing (the file is created when absent), so the
    hand-written parts of the document around them are kept.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        _, tail = rest.split(end, 1)
        new = head + block + tail
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)

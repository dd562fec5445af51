"""Warming up the numba kernels a precompute run uses, before its first tile, so that the
first run on a machine says it compiles (10-40 s) and per-tile times leave it out."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from npa_precompute.affinity import affinity_maps
from npa_precompute.imagestats import image_stats

__all__ = ["COMPILE_NOTICE_AFTER", "compile_kernels"]


#: Seconds into the warm-up after which a compilation in progress is announced.
COMPILE_NOTICE_AFTER = 0.5


def compile_kernels(
    cfg, notify: Callable[[str], None] | None = None, reason: str | None = None
) -> float:
    """Run each numba kernel a run uses once, on tiny inputs of the run's types.

    The first run on a machine compiles them (10-40 s; ``notify`` is then told so, once,
    with ``reason``, by default :func:`npa_precompute.kernel_cache.compile_reason`)
    and numba caches the machine code on disk; later runs and the worker processes load
    it from there in about a second (which the first tile would spend anyway). Warming up
    here keeps compilation out of the per-tile kernel times.

    Returns
    -------
    float
        Seconds spent compiling, 0.0 when every kernel came from numba's cache.
    """
    from npa_precompute.kernel_cache import compile_reason, kernel_dispatchers

    kernels = kernel_dispatchers()
    reason = compile_reason(kernels) if reason is None else reason

    def misses() -> int:
        return sum(sum(k.stats.cache_misses.values()) for k in kernels)

    before = misses()
    done = threading.Event()

    def announce() -> None:
        # numba counts a cache miss before it compiles: say so while it does, once
        if done.wait(COMPILE_NOTICE_AFTER):
            return
        while not done.is_set():
            if misses() > before:
                if notify is not None:
                    notify(
                        f"Compiling the numba kernels ({reason}; 10-40 s, later runs load "
                        "them from numba's cache)..."
                    )
                return
            done.wait(0.1)

    watcher = threading.Thread(target=announce, name="npaloss-compile-notice", daemon=True)
    t0 = time.perf_counter()
    watcher.start()
    try:
        preset = cfg.preset
        index = np.zeros((6, 6), dtype=preset.label_dtype)
        index[2:, 3:] = 1
        index[0, 0] = preset.ignore_index
        dtype = np.dtype(cfg.weight_dtype)
        for writable in (True, False):  # files read through Pillow come read-only
            if preset.palette is not None:
                rgb = np.array([*preset.palette, *preset.ignore_colors], dtype=np.uint8)
                rgb = np.ascontiguousarray(rgb[np.arange(36) % len(rgb)].reshape(6, 6, 3))
                rgb.setflags(write=writable)
                label = preset.decode(rgb, unknown_colors="ignore")
            else:
                label = index.copy()
                label.setflags(write=writable)
            volume = getattr(cfg, "volume", False)
            # a volume's (D, H, W) regions, here for the 2-D kernel: their largest k
            ks = [max(k) if volume and isinstance(k, tuple) else k for k in cfg.ks]
            aff = affinity_maps(label, ks)
            if volume:  # the volume kernel, on a (2, 6, 6) volume
                affinity_maps(np.stack([label, label]), cfg.ks)
            ignore = label == preset.ignore_index
            for t in {t.kind: t for t in cfg.transforms}.values():
                t.apply(aff[0], ignore, dtype=dtype)
            for image_dtype in (np.uint8, np.uint16):
                image = np.zeros((2, 2, 3), dtype=image_dtype)
                image.setflags(write=writable)
                image_stats(image)
    finally:
        done.set()
        watcher.join()
    return time.perf_counter() - t0 if misses() > before else 0.0

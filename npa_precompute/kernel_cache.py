"""Why numba compiles the kernels on this run: :func:`compile_reason`.

numba caches each ``cache=True`` kernel's machine code next to an index file (``*.nbi``)
that records numba's version, the source file's stamp (modification time and size) and the
signatures compiled. A run compiles when the index is missing (an empty cache: a fresh
install or a cleared ``__pycache__``), when it is stale (the kernels' source or numba
changed: an update or a reinstall), or when a kernel meets input types it was not compiled
for (a new signature).
"""

from __future__ import annotations

import pickle

__all__ = ["compile_reason", "kernel_dispatchers"]


def kernel_dispatchers() -> list:
    """The numba dispatchers of :mod:`npa_precompute._kernels`."""
    from numba.core.registry import CPUDispatcher

    from npa_precompute import _kernels

    return [v for v in vars(_kernels).values() if isinstance(v, CPUDispatcher)]


def _state(kernel) -> str:
    # numba's IndexDataCacheFile: index = pickle(version) + pickle((stamp, overloads))
    cache_file = kernel._cache._cache_file
    try:
        with open(cache_file._index_path, "rb") as f:
            version = pickle.load(f)
            data = f.read()
    except FileNotFoundError:
        return "empty"
    if version != cache_file._version:
        return "numba"
    stamp, _ = pickle.loads(data)
    return "source" if stamp != cache_file._source_stamp else "cached"


def compile_reason(kernels: list | None = None) -> str:
    """Why the next call of ``kernels`` would compile, as words for the user.

    Parameters
    ----------
    kernels : list of numba dispatchers or None
        None: :func:`kernel_dispatchers`.

    Returns
    -------
    str
        ``"numba's cache is empty (first run after installing)"`` (no kernel cached),
        ``"the kernels' source changed since they were cached (an update or reinstall)"``,
        ``"numba was upgraded since they were cached"``, ``"first use of some kernels on this
        machine (...)"`` (some cached, others never), ``"new input types (signatures) for
        cached kernels"``, or ``"reason unknown"`` where numba's cache layout is not the one
        read here.
    """
    try:
        states = {_state(k) for k in (kernel_dispatchers() if kernels is None else kernels)}
    except (AttributeError, OSError, pickle.UnpicklingError, ValueError, TypeError, EOFError):
        return "reason unknown"
    if states == {"empty"}:
        return "numba's cache is empty (first run after installing)"
    if "source" in states:
        return "the kernels' source changed since they were cached (an update or reinstall)"
    if "numba" in states:
        return "numba was upgraded since they were cached"
    if "empty" in states:  # others are cached: this input needs kernels no run used yet
        return "first use of some kernels on this machine (new input types; others cached)"
    return "new input types (signatures) for cached kernels"

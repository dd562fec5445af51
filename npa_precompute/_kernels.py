"""numba kernels for the neighboring pixel affinity map (Feng et al. 2020, Eq. 1).

Pure array-in / array-out functions: no validation, no allocation policy, no I/O.
The public wrapper :func:`npa_precompute.affinity.affinity_maps` validates and
casts its inputs, allocates the output and calls one of the kernels below.

All kernels take *dense* labels (values ``0 .. n_classes - 1``) and compute

    A[x, y] = (2k + 1)**2 - #{(u, v) : |x - u| <= k, |y - v| <= k, C(u', v') == C(x, y)}

where ``(u', v')`` is ``(u, v)`` clamped into the tile (edge-replicate padding,
the paper's Fig. 3). Padding is never materialised: the clamped window is
counted with multiplicities, so any ``k >= 0`` works, also ``2k + 1 > H, W``.

Two exact methods:

* ``integral``: per-class summed-area tables (integral images) over a band of
  rows plus its halo; one table serves every ``k`` of the call.
* ``columns``: per-column class histograms of the vertical window, slid one
  row at a time, and a horizontal running sum of the pixel's own class; cost
  independent of ``k`` and nearly independent of the number of classes.

Both parallelise over row bands with ``prange``; every band writes only its own
output rows and reduces nothing across threads, so results are bit-identical
for any thread count.

Volumes ``(D, H, W)`` and anisotropic regions ``(k_d, k_h, k_w)`` go to
``affinity_boxes``: per class, window counts by running sums along W, then H, then D
(separable box sums), the same clamping, parallel over (class, column band) tasks.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _clamp(i, n):
    if i < 0:
        return 0
    if i >= n:
        return n - 1
    return i


# --------------------------------------------------------------------------- integral images


@njit(cache=True)
def _build_band_sat(dense, lo, hi, n_classes, sat):
    """Per-class summed-area table of rows ``lo:hi``: ``sat[c, i, j]`` counts class c in
    rows ``lo .. lo+i-1`` and columns ``0 .. j-1``."""
    w = dense.shape[1]
    for c in range(n_classes):
        plane = sat[c]
        for j in range(w + 1):
            plane[0, j] = 0
        for i in range(hi - lo):
            row = dense[lo + i]
            run = 0
            plane[i + 1, 0] = 0
            for j in range(w):
                if row[j] == c:
                    run += 1
                plane[i + 1, j + 1] = plane[i, j + 1] + run


@njit(cache=True, inline="always")
def _rect(plane, lo, r0, r1, s0, s1):
    """Class count in rows r0..r1, columns s0..s1 (inclusive, tile coordinates)."""
    a = r0 - lo
    b = r1 - lo + 1
    return (
        np.int64(plane[b, s1 + 1])
        - np.int64(plane[a, s1 + 1])
        - np.int64(plane[b, s0])
        + np.int64(plane[a, s0])
    )


@njit(cache=True)
def _same_class_count_border(dense, plane, lo, x, y, k, c):
    """Same-class count in the edge-replicated window around (x, y) for windows that
    reach past the tile border; the padded rows/columns are counted with multiplicity."""
    h, w = dense.shape
    r0 = max(x - k, 0)
    r1 = min(x + k, h - 1)
    s0 = max(y - k, 0)
    s1 = min(y + k, w - 1)
    e_top = max(k - x, 0)
    e_bot = max(x + k - (h - 1), 0)
    e_left = max(k - y, 0)
    e_right = max(y + k - (w - 1), 0)
    n = _rect(plane, lo, r0, r1, s0, s1)
    if e_top:
        n += e_top * _rect(plane, lo, 0, 0, s0, s1)
    if e_bot:
        n += e_bot * _rect(plane, lo, h - 1, h - 1, s0, s1)
    if e_left:
        n += e_left * _rect(plane, lo, r0, r1, 0, 0)
    if e_right:
        n += e_right * _rect(plane, lo, r0, r1, w - 1, w - 1)
    if e_top and e_left and dense[0, 0] == c:
        n += e_top * e_left
    if e_top and e_right and dense[0, w - 1] == c:
        n += e_top * e_right
    if e_bot and e_left and dense[h - 1, 0] == c:
        n += e_bot * e_left
    if e_bot and e_right and dense[h - 1, w - 1] == c:
        n += e_bot * e_right
    return n


@njit(cache=True, parallel=True)
def affinity_integral(dense, ks, n_classes, band_rows, out):
    """Eq. 1 for every k in ``ks`` from one integral-image build per row band.

    dense: (H, W) uint8/uint16/int32 dense labels; ks: (K,) int64, k >= 0;
    out: (K, H, W) unsigned integer, written in place.
    """
    h, w = dense.shape
    kmax = 0
    for k in ks:
        kmax = max(kmax, k)
    halo = min(kmax, h)
    n_bands = (h + band_rows - 1) // band_rows
    for b in prange(n_bands):
        r0 = b * band_rows
        r1 = min(r0 + band_rows, h)
        lo = max(r0 - halo, 0)
        hi = min(r1 + halo, h)
        sat = np.empty((n_classes, hi - lo + 1, w + 1), dtype=np.int32)
        _build_band_sat(dense, lo, hi, n_classes, sat)
        for ki in range(ks.shape[0]):
            k = ks[ki]
            full = (2 * k + 1) * (2 * k + 1)
            o = out[ki]
            for x in range(r0, r1):
                row = dense[x]
                interior_rows = x - k >= 0 and x + k <= h - 1
                a = x - k - lo
                bb = x + k - lo + 1
                for y in range(w):
                    c = row[y]
                    plane = sat[c]
                    if interior_rows and y - k >= 0 and y + k <= w - 1:
                        n = (
                            np.int64(plane[bb, y + k + 1])
                            - np.int64(plane[a, y + k + 1])
                            - np.int64(plane[bb, y - k])
                            + np.int64(plane[a, y - k])
                        )
                    else:
                        n = _same_class_count_border(dense, plane, lo, x, y, k, c)
                    o[x, y] = full - n


# --------------------------------------------------------------------------- column counts


@njit(cache=True, inline="always")
def _slide(hc, k, w, full, s, ya, yb, o):
    """Slide the window sum ``s`` of one class's column counts ``hc`` (W,) from centre
    ya - 1 to yb - 1, writing ``full - s`` into o[ya:yb]; returns the last sum."""
    lo = max(ya, k + 1)
    hi = min(yb, w - k)
    if lo >= hi:
        lo = hi = yb
    for y in range(ya, lo):
        s += np.int64(hc[_clamp(y + k, w)]) - np.int64(hc[_clamp(y - k - 1, w)])
        o[y] = full - s
    # interior: both window ends inside the tile, contiguous slices without clamping
    enter = hc[lo + k : hi + k]
    leave = hc[lo - k - 1 : hi - k - 1]
    oo = o[lo:hi]
    for i in range(hi - lo):
        s += np.int64(enter[i]) - np.int64(leave[i])
        oo[i] = full - s
    for y in range(hi, yb):
        s += np.int64(hc[_clamp(y + k, w)]) - np.int64(hc[_clamp(y - k - 1, w)])
        o[y] = full - s
    return s


@njit(cache=True)
def _window_sum(hc, k, w, y):
    """Sum of hc over columns y-k .. y+k, clamped (edge columns counted with multiplicity)."""
    s = np.int64(0)
    for j in range(max(y - k, 0), min(y + k, w - 1) + 1):
        s += hc[j]
    if y - k < 0:
        s += np.int64(k - y) * hc[0]
    if y + k > w - 1:
        s += np.int64(y + k - (w - 1)) * hc[w - 1]
    return s


@njit(cache=True)
def _init_column_counts(dense, k, r0, hist):
    """hist[c, j] = count of class c in column j over rows r0-k .. r0+k, clamped."""
    h, w = dense.shape
    hist[:, :] = 0
    top = r0 - k
    bot = r0 + k
    for u in range(max(top, 0), min(bot, h - 1) + 1):
        row = dense[u]
        for j in range(w):
            hist[row[j], j] += 1
    if top < 0:
        row = dense[0]
        for j in range(w):
            hist[row[j], j] += -top
    if bot > h - 1:
        row = dense[h - 1]
        for j in range(w):
            hist[row[j], j] += bot - (h - 1)


@njit(cache=True)
def _row_from_column_counts(row, starts, n_runs, hist, k, hvec, o):
    """One output row of Eq. 1 from the column counts of its vertical window."""
    n_classes, w = hist.shape
    full = (2 * k + 1) * (2 * k + 1)
    if n_runs * (min(2 * k + 1, w) // 4 + 8) <= n_classes * w:
        # one window sum per run of equal labels, then slide it along the run
        for r in range(n_runs):
            y0 = starts[r]
            hc = hist[row[y0]]
            s = _window_sum(hc, k, w, y0)
            o[y0] = full - s
            _slide(hc, k, w, full, s, y0 + 1, starts[r + 1], o)
    else:
        # labels change almost every pixel: slide the window histogram of all classes
        for c in range(n_classes):
            hvec[c] = _window_sum(hist[c], k, w, 0)
        o[0] = full - hvec[row[0]]
        for y in range(1, w):
            add = _clamp(y + k, w)
            sub = _clamp(y - k - 1, w)
            if add != sub:
                for c in range(n_classes):
                    hvec[c] += np.int64(hist[c, add]) - np.int64(hist[c, sub])
            o[y] = full - hvec[row[y]]


@njit(cache=True, parallel=True)
def affinity_columns(dense, ks, n_classes, band_rows, hist_dtype_probe, out):
    """Eq. 1 for every k in ``ks`` by sliding per-column class counts row by row.

    Cost per k is nearly independent of k and of the number of classes; the row
    scan for runs of equal labels is shared by all k.

    dense: (H, W) dense labels; ks: (K,) int64; out: (K, H, W) unsigned integer,
    written in place; hist_dtype_probe: 0-d array whose dtype holds 2 * max(ks) + 1.
    """
    h, w = dense.shape
    n_k = ks.shape[0]
    n_bands = (h + band_rows - 1) // band_rows
    for b in prange(n_bands):
        r0 = b * band_rows
        r1 = min(r0 + band_rows, h)
        hist = np.empty((n_k, n_classes, w), dtype=hist_dtype_probe.dtype)
        hvec = np.empty(n_classes, dtype=np.int64)
        starts = np.empty(w + 1, dtype=np.int32)
        for ki in range(n_k):
            _init_column_counts(dense, ks[ki], r0, hist[ki])
        for x in range(r0, r1):
            if x > r0:
                for ki in range(n_k):
                    k = ks[ki]
                    hk = hist[ki]
                    leave = dense[_clamp(x - k - 1, h)]
                    enter = dense[_clamp(x + k, h)]
                    for j in range(w):
                        hk[leave[j], j] -= 1
                        hk[enter[j], j] += 1
            row = dense[x]
            n = 0
            starts[0] = 0
            for y in range(1, w):
                if row[y] != row[y - 1]:
                    n += 1
                    starts[n] = y
            n += 1
            starts[n] = w
            for ki in range(n_k):
                _row_from_column_counts(row, starts, n, hist[ki], ks[ki], hvec, out[ki, x])


# ----------------------------------------------------------------------- separable box sums (N-D)


@njit(cache=True, inline="always")
def _is(value, c):
    return np.int64(1) if np.int64(value) == c else np.int64(0)


@njit(cache=True)
def _row_box(pref, a, k, w, w0, w1, first, last, dst):
    """dst[j - w0] = #{v in [j - k, j + k] : row[clamp(v)] == c} for j in w0..w1-1,
    from the prefix counts ``pref[v - a] = #{a <= u < v : row[u] == c}`` of the columns
    the windows reach; clamped columns (edge padding) counted with multiplicity
    (``first``/``last``: whether row[0]/row[w - 1] is of the class)."""
    e1 = min(max(k, w0), w1)  # interior: j - k >= 0 and j + k <= w - 1
    e2 = max(min(w - k, w1), e1)
    # contiguous slices indexed from 0 (no negative-index wraparound checks: vectorised)
    hi = pref[e1 + k + 1 - a : e2 + k + 1 - a]
    lo = pref[e1 - k - a : e2 - k - a]
    out = dst[e1 - w0 : e2 - w0]
    for i in range(e2 - e1):
        out[i] = hi[i] - lo[i]
    for j in range(w0, e1):
        dst[j - w0] = _edge_window(pref, a, j, k, w, first, last)
    for j in range(e2, w1):
        dst[j - w0] = _edge_window(pref, a, j, k, w, first, last)


@njit(cache=True, inline="always")
def _edge_window(pref, a, j, k, w, first, last):
    lo = j - k
    hi = j + k
    n = np.int64(pref[min(hi, w - 1) + 1 - a]) - np.int64(pref[max(lo, 0) - a])
    return n + max(0, -lo) * first + max(0, hi - (w - 1)) * last


@njit(cache=True)
def _axis0_box(src, k, dst):
    """dst[i] = sum of src[clamp(v)] over v in [i - k, i + k], along axis 0 of
    (n, m) arrays; whole rows at a time (vectorised), edge rows with multiplicity."""
    n, m = src.shape
    for j in range(m):
        dst[0, j] = (k + 1) * src[0, j]
    for v in range(1, min(k, n - 1) + 1):
        for j in range(m):
            dst[0, j] += src[v, j]
    if k > n - 1:
        for j in range(m):
            dst[0, j] += (k - n + 1) * src[n - 1, j]
    for i in range(1, n):
        a = src[_clamp(i + k, n)]
        b = src[_clamp(i - k - 1, n)]
        prev = dst[i - 1]
        cur = dst[i]
        for j in range(m):
            cur[j] = prev[j] + a[j] - b[j]


@njit(cache=True)
def _plane_box(dense, z, c, kh, kw, w0, w1, pref, rows, dst):
    """dst = (H, w1 - w0) window counts of class c in slice z over (2kh+1)(2kw+1).

    The prefix counts of every row are written before any is read back (``pref`` is
    (H, >= W + 1)): reading a row's freshly stored prefixes with vector loads would
    stall on store forwarding, several times the cost of the arithmetic."""
    h, w = dense.shape[1], dense.shape[2]
    a = max(w0 - kw, 0)
    b = min(w1 + kw, w)
    for y in range(h):
        seg = dense[z, y, a:b]
        p = pref[y, 1 : b - a + 1]
        pref[y, 0] = 0
        s = 0
        for i in range(b - a):
            s += _is(seg[i], c)
            p[i] = s
    for y in range(h):
        row = dense[z, y]
        _row_box(pref[y], a, kw, w, w0, w1, _is(row[0], c), _is(row[w - 1], c), rows[y])
    _axis0_box(rows, kh, dst)


@njit(cache=True)
def _class_band(dense, c, kd, kh, kw, w0, w1, out_k, ring, pref, rows, acc):
    """Eq. 1 at the voxels of class c in columns w0..w1-1 for region (kd, kh, kw).

    The 2-D window counts of each slice go to a ring of ``min(D, 2kd + 2)`` planes as
    they are needed; ``acc`` slides the sum of ``2kd + 1`` planes (clamped) along D."""
    d = dense.shape[0]
    h = dense.shape[1]
    bw = w1 - w0
    n_ring = ring.shape[0]
    full = (2 * kd + 1) * (2 * kh + 1) * (2 * kw + 1)
    done = -1  # highest slice whose plane is in the ring
    for z in range(0, min(kd, d - 1) + 1):
        _plane_box(dense, z, c, kh, kw, w0, w1, pref, rows, ring[z % n_ring])
        done = z
    first = ring[0]
    acc[:, :] = first * (kd + 1)
    for z in range(1, done + 1):
        acc += ring[z % n_ring]
    if kd > d - 1:
        acc += ring[(d - 1) % n_ring] * (kd - d + 1)
    for z in range(d):
        pe = ring[0]
        pl = ring[0]
        if z > 0:
            e = _clamp(z + kd, d)
            if e > done:
                _plane_box(dense, e, c, kh, kw, w0, w1, pref, rows, ring[e % n_ring])
                done = e
            pe = ring[e % n_ring]
            pl = ring[_clamp(z - kd - 1, d) % n_ring]
        for y in range(h):
            ar = acc[y]
            if z > 0:
                er = pe[y]
                lr = pl[y]
                for j in range(bw):
                    ar[j] += er[j] - lr[j]
            lab = dense[z, y, w0:w1]
            o = out_k[z, y, w0:w1]
            for j in range(bw):  # only the class's own voxels: other tasks write the rest
                if np.int64(lab[j]) == c:
                    o[j] = full - ar[j]


@njit(cache=True, parallel=True)
def affinity_boxes(dense, regions, n_classes, n_bands, acc_dtype_probe, out):
    """Eq. 1 of a (D, H, W) volume for every region by per-class separable box sums.

    For each class and each band of columns (one task, the tasks in parallel): window
    counts of the class along W (running sums), then along H, then along D, with
    indices clamped (edge padding); the voxels of the class get ``window - count``.
    Cost per voxel and class independent of k; memory per task
    ``(min(D, 2k_d + 2) + 2) * H * band`` accumulators and ``H * (W + 1)`` int32 prefix
    counts. Every task writes only the voxels of its class in its columns: results are
    identical for any thread count. No accumulator overflows: every value is a window
    count over the axes summed so far, at most the whole window, which the caller's
    dtype holds (int16 below 2**15 voxels, int32 below 2**31, else int64).

    dense: (D, H, W) dense labels; regions: (K, 3) int64 (k_d, k_h, k_w);
    acc_dtype_probe: (1,) array whose dtype holds the largest window;
    out: (K, D, H, W) unsigned integer, written in place.
    """
    d, h, w = dense.shape
    band = (w + n_bands - 1) // n_bands
    n_k = regions.shape[0]
    for task in prange(n_classes * n_bands):
        c = task // n_bands
        w0 = (task % n_bands) * band
        w1 = min(w0 + band, w)
        if w0 >= w1:
            continue
        rows = np.empty((h, w1 - w0), dtype=acc_dtype_probe.dtype)
        pref = np.empty((h, w + 1), dtype=np.int32)  # prefix counts: up to W
        acc = np.empty((h, w1 - w0), dtype=acc_dtype_probe.dtype)
        for ki in range(n_k):
            kd = regions[ki, 0]
            n_ring = min(d, 2 * kd + 2)
            ring = np.empty((n_ring, h, w1 - w0), dtype=acc_dtype_probe.dtype)
            _class_band(dense, c, kd, regions[ki, 1], regions[ki, 2], w0, w1, out[ki],
                        ring, pref, rows, acc)  # fmt: skip


# --------------------------------------------------------------------------- label renumbering


@njit(cache=True, parallel=True)
def mark_present(labels, lo, seen):
    """seen[t, v - lo] = 1 for every value v in row block t of labels.

    seen: (n_blocks, span) uint8, zeroed; the caller ORs the blocks (no shared writes).
    """
    h = labels.shape[0]
    n_blocks = seen.shape[0]
    step = (h + n_blocks - 1) // n_blocks
    for t in prange(n_blocks):
        mine = seen[t]
        for x in range(t * step, min((t + 1) * step, h)):
            row = labels[x]
            for y in range(row.shape[0]):
                mine[np.int64(row[y]) - lo] = 1


@njit(cache=True, parallel=True)
def apply_lut(labels, lo, lut, out):
    """out[x, y] = lut[labels[x, y] - lo], parallel over rows."""
    h, w = labels.shape
    for x in prange(h):
        row = labels[x]
        o = out[x]
        for y in range(w):
            o[y] = lut[np.int64(row[y]) - lo]


# --------------------------------------------------------------------------- decoding, weights


@njit(cache=True, parallel=True)
def decode_colors(rgb, codes, values, unknown, out):
    """out[x, y] = values[i] where (r << 16 | g << 8 | b) == codes[i]; else ``unknown``.

    rgb: (H, W, >=3) uint8; codes: (n,) int64; values: (n,) int64; out: (H, W).
    Returns nothing; unknown colours are left as ``unknown`` for the caller to report.
    """
    h, w = out.shape
    n = codes.shape[0]
    for x in prange(h):
        for y in range(w):
            code = (np.int64(rgb[x, y, 0]) << 16) | (np.int64(rgb[x, y, 1]) << 8) | rgb[x, y, 2]
            v = unknown
            for i in range(n):
                if codes[i] == code:
                    v = values[i]
                    break
            out[x, y] = v


@njit(cache=True)
def valid_min_max(aff, ignore):
    """(min, max) of aff over pixels where ignore is False; (0, -1) if there are none."""
    lo = np.int64(0)
    hi = np.int64(-1)
    first = True
    a = aff.ravel()
    m = ignore.ravel()
    for i in range(a.shape[0]):
        if not m[i]:
            v = np.int64(a[i])
            if first:
                lo = v
                hi = v
                first = False
            elif v < lo:
                lo = v
            elif v > hi:
                hi = v
    return lo, hi


@njit(cache=True, parallel=True)
def gather_weights(aff, ignore, table, out):
    """out = table[aff], 0 where ignore: any weight transformation of integer counts."""
    h, w = aff.shape
    for x in prange(h):
        for y in range(w):
            out[x, y] = 0 if ignore[x, y] else table[aff[x, y]]


@njit(cache=True)
def band_sums(image, sums, squares):
    """Per-band sum and sum of squares of an (H, W, C) integer image (exact, in uint64)."""
    h, w, c = image.shape
    for x in range(h):
        for y in range(w):
            for b in range(c):
                v = np.uint64(image[x, y, b])
                sums[b] += v
                squares[b] += v * v


@njit(cache=True)
def gather_masked(aff, label, ignore_value, table, out):
    """out = table[aff], 0 where label == ignore_value; 1-D arrays, one thread.

    The weights of a window derived from its counts (:mod:`npa_precompute.derived`).
    Returns the number of non-ignore pixels whose count lies past the table (left 0):
    none unless the counts disagree with the tile's recorded range.
    """
    n = aff.shape[0]
    m = table.shape[0]
    bad = 0
    for i in range(n):
        if label[i] == ignore_value:
            out[i] = 0
        else:
            a = aff[i]
            if a < m:
                out[i] = table[a]
            else:
                out[i] = 0
                bad += 1
    return bad


@njit(cache=True, parallel=True)
def count_ranges(aff, ignore, out):
    """out[i] = (min, max) of aff[i] over pixels where ignore is False, (0, -1) if none.

    aff: (K, H, W) counts of every k; ignore: (H, W) bool; out: (K, 2) int64. Every k in
    one pass over the mask, parallel over row bands (each band its own partial min/max).
    """
    n_k, h, w = aff.shape
    n_bands = max(1, min(h, 64))
    step = (h + n_bands - 1) // n_bands
    lo = np.full((n_bands, n_k), np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full((n_bands, n_k), -1, dtype=np.int64)
    for b in prange(n_bands):
        for x in range(b * step, min((b + 1) * step, h)):
            ig = ignore[x]
            for i in range(n_k):
                row = aff[i, x]
                mn = lo[b, i]
                mx = hi[b, i]
                for y in range(w):
                    if not ig[y]:
                        v = np.int64(row[y])
                        mn = min(mn, v)
                        mx = max(mx, v)
                lo[b, i] = mn
                hi[b, i] = mx
    for i in range(n_k):
        mn = lo[0, i]
        mx = hi[0, i]
        for b in range(1, n_bands):
            mn = min(mn, lo[b, i])
            mx = max(mx, hi[b, i])
        if mx < 0:
            out[i, 0] = 0
            out[i, 1] = -1
        else:
            out[i, 0] = mn
            out[i, 1] = mx


@njit(cache=True)
def gather_masked_add(aff, label, ignore_value, table, acc):
    """acc += float64(table[aff]) where label != ignore_value; 1-D arrays, one thread.

    One k of a multi-scale mean (:mod:`npa_precompute.derived`); returns the number of
    non-ignore pixels whose count lies past the table (see :func:`gather_masked`).
    """
    n = aff.shape[0]
    m = table.shape[0]
    bad = 0
    for i in range(n):
        if label[i] != ignore_value:
            a = aff[i]
            if a < m:
                acc[i] += np.float64(table[a])
            else:
                bad += 1
    return bad

"""Augmented training crops streamed from the weight store written by ``npa-precompute``.

Item ``i`` is a function of ``(seed, i)`` alone (:func:`npa_train.augment.sample_params`):
the same seed gives the same crops whatever the number of DataLoader workers, and
workers, which receive different indices, never produce identical augmentations.
Only the tile window a crop maps into (plus one pixel of margin) is read from the
store (zarr slicing ``arr[y0:y1, x0:x1]`` touches only the chunks it needs).

Two output modes (``output``):

``"crop"`` (default)
    ``dataset[i]`` reads the window and resamples it on the CPU in the process that
    asks (a DataLoader worker): ``image`` (C, h, w) float32, ``label`` (h, w) int64,
    ``weight`` (h, w) float32, ``tile``, ``index``. Used for CPU training and previews.
``"window"``
    ``dataset[i]`` returns the raw window (uint8/uint16 image, labels, weights) and its
    affine map; :meth:`StoreCropDataset.collate` pads a batch and
    :meth:`StoreCropDataset.warp` resamples it, batched, on the training device (GPU):
    the workers only read and decompress.

Both give the same crops up to float rounding (the same random parameters, the
same :func:`npa_train.augment.warp_windows`).

Weights that the store does not hold as arrays (``npa-precompute run --no-store-weights``,
or any other transformation of a stored k, or multi-scale ``ms_k8-16-32_...``) are
derived from the stored counts (:mod:`npa_precompute.derived`), bit for bit the values
the precompute would have stored: in ``"crop"`` mode in the worker, from the count
windows it reads instead of float windows; in ``"window"`` mode on the training device,
in :meth:`StoreCropDataset.warp` (the workers ship the 2- or 4-byte counts).

Reading: windows are read with :meth:`npa_precompute.store.Tile.read_window`'s readers,
straight from the shard files (:class:`~npa_precompute.shards.ShardReader`: the shard
index once per worker, then one ``pread`` and one Blosc decompression per chunk the
window touches) wherever the array has exactly the layout ``npa-precompute`` writes; any
other layout is read through zarr, about three times slower, with a warning once per
store (or always through zarr with ``reader="zarr"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from npa_precompute.derived import DerivedWeights
from npa_precompute.errors import ParameterError
from npa_precompute.names import WeightsSpec, counts_name
from npa_precompute.params import check_choice, check_int, parse_tiles
from npa_precompute.shards import ShardReader, ZarrReader
from npa_precompute.store import StoreError, list_tiles, open_store, open_tile, store_info
from npa_train import online as _online
from npa_train.augment import (
    AugmentConfig,
    CropParams,
    collate_windows,
    parse_crop,
    sample_params,
    warp_windows,
)
from npa_train.weights import TorchDeriver

__all__ = [
    "OUTPUTS",
    "READERS",
    "AugmentConfig",
    "CropParams",
    "ShardReader",
    "StoreCropDataset",
    "ZarrReader",
    "parse_crop",
    "parse_tiles",
    "pooled_mean_std",
    "write_preview",
]

_NORMALIZE = ("store", "tile")
#: Largest grown crop (pixels per image) of ``online:`` weights: the crop plus the label
#: halo of k pixels each side, 8192 x 8192 (a batch of 8 of them is 2 GiB of counts).
MAX_GROWN_PIXELS = 1 << 26
#: Allowed values of ``output``.
OUTPUTS = ("crop", "window")
#: Allowed values of ``reader``: ``auto`` reads shard files directly where the layout allows
#: (:class:`ShardReader`), else through zarr; ``zarr`` always through zarr.
READERS = ("auto", "zarr")


def pooled_mean_std(means, stds, counts) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of the union of tiles from each tile's own mean/std/pixels."""
    m = np.asarray(means, dtype=np.float64)
    s = np.asarray(stds, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)[:, None]
    mean = (n * m).sum(0) / n.sum()
    var = (n * (s**2 + m**2)).sum(0) / n.sum() - mean**2
    return mean, np.sqrt(np.maximum(var, 0.0))


class StoreCropDataset(Dataset):
    """Augmented (image, label, weight) crops from an ``npa-precompute`` weight store.

    Item ``i`` draws from a generator seeded with ``(seed, i)`` a tile (with
    probability proportional to its pixel count) and the augmentation of ``augment``
    (see :mod:`npa_train.augment`); the same parameters resample image, label and
    weight. Pixels that map outside the tile get label ``ignore_index``, weight 0 and
    image 0 (after normalization, i.e. the mean).

    Parameters
    ----------
    store_path : str or PathLike
        Store written by ``npa-precompute run --images ...``.
    weights_name : str or None
        Weights to return (e.g. ``"k32_log10_L0.5"``): a stored array, or any
        transformation of a stored k or a multi-scale name (``"ms_k8-16-32_log10_L0.5"``),
        derived from the counts; None reads no weights and returns weight 1 at every
        non-ignored pixel (0 elsewhere): plain cross-entropy.
        ``"online:k32_log10_L0.5"`` (any weights name after ``online:``, multi-scale
        included): weights computed
        from the *augmented* label where the crop is resampled (:meth:`warp`, on the
        training device for ``output="window"``), exact Eq. 1 at the training scale; the
        label is resampled ``K`` pixels beyond the crop on each side (the window read
        grows by ``K`` / scale tile pixels), so pixels at the crop border count their
        real neighbours, and beyond the tile its edge is repeated as Eq. 1 pads it.
        ``norm`` takes min/max over the crop. The store needs no weights array for it.
        The grown crop must hold at most :data:`MAX_GROWN_PIXELS` pixels.
    augment : AugmentConfig, optional
        Default ``AugmentConfig()``: the paper's recipe with 513 × 513 crops.
        ``AugmentConfig.identity(crop)`` gives exact, unresampled crops.
    crop : int or (int, int), optional
        Replaces ``augment.crop`` when given.
    tiles : sequence of str, comma-separated str, or None
        Tile ids to draw from; None (default) uses every complete tile of the store.
    length : int, default 10000
        ``len(dataset)``; item ``i`` is defined for any ``i >= 0``.
    seed : int, default 0
    normalize : {"store", "tile"}, default "store"
        Per-band image normalization with the mean/std of all the dataset's tiles
        pooled (from each tile's ``image_mean``/``image_std`` attrs, weighted by pixel
        count), or with each tile's own.
    output : {"crop", "window"}, default "crop"
        See the module docstring.
    reader : {"auto", "zarr"}, default "auto"
        ``auto``: read windows straight from the shard files where the array has the
        layout ``npa-precompute`` writes (:class:`ShardReader`), else through zarr;
        ``zarr``: always through zarr. Both return the same values.
    root : zarr.Group, optional
        The store at ``store_path`` opened already (the trainer's), so it is not opened
        again in this process; worker processes open their own.

    Raises
    ------
    StoreError
        No store at ``store_path``; an unknown or incomplete tile in ``tiles`` (the
        message lists the tiles); no complete tile; a tile without an image; a
        ``weights_name`` a tile cannot give (not a weights name, or a k without counts:
        the message lists the k it has and the command that adds them); tiles with
        different band counts or without image statistics.
    ParameterError
        ``weights_name`` not a weights name, weights the store's dtype cannot hold
        (``k130_raw`` in a float16 store), or an ``online:`` halo too large for the crop
        (argument ``weights``).
    TypeError, ValueError
        Bad ``crop``, ``length``, ``seed``, ``normalize`` or ``output``.
    """

    def __init__(
        self,
        store_path: str | os.PathLike,
        weights_name: str | None = None,
        *,
        augment: AugmentConfig | None = None,
        crop: int | Sequence[int] | None = None,
        tiles: str | Sequence[str] | None = None,
        length: int = 10_000,
        seed: int = 0,
        normalize: str = "store",
        output: str = "crop",
        reader: str = "auto",
        root=None,
    ) -> None:
        augment = AugmentConfig() if augment is None else augment
        if not isinstance(augment, AugmentConfig):
            raise TypeError(f"`augment` must be an AugmentConfig, got {type(augment).__name__}")
        if crop is not None:
            augment = replace(augment, crop=parse_crop(crop))
        self.augment = augment
        self.crop = augment.crop
        check_int("length", length, minimum=1)
        check_int("seed", seed, minimum=0)
        check_choice("normalize", normalize, _NORMALIZE)
        check_choice("output", output, OUTPUTS)
        check_choice("reader", reader, READERS)
        self.reader = reader
        self.store_path = str(Path(store_path))
        self.weights_name = weights_name
        self.length = int(length)
        self.seed = int(seed)
        self.normalize = normalize
        self.output = output

        root = open_store(self.store_path) if root is None else root
        self._root, self._root_pid = root, os.getpid()  # reused by this process's reads
        info = store_info(root)
        self.info = info
        self.classes = list(info.classes)
        self.num_classes = info.num_classes
        self.ignore_index = info.ignore_index
        self.preset = info.preset
        wanted = parse_tiles(tiles)
        if wanted is None:
            wanted = list_tiles(root, complete_only=True)
            if not wanted:
                raise StoreError(f"store {self.store_path} holds no complete tile")
        opened = [open_tile(root, t) for t in wanted]  # StoreError / IncompleteTileError
        no_image = [t.tile_id for t in opened if t.image is None]
        if no_image:
            raise StoreError(
                f"tile(s) {', '.join(no_image)} of {self.store_path} have no image; training "
                "needs images: re-run `npa-precompute run ... --images <image files>`"
            )
        bands = {t.tile_id: int(t.image.shape[2]) for t in opened}
        if len(set(bands.values())) > 1:
            raise StoreError(f"tiles have different band counts: {bands}")
        #: the WeightsSpec of ``online:`` weights, else None
        self.online = None
        if isinstance(weights_name, str) and weights_name.strip().lower().startswith("online:"):
            self.online = WeightsSpec.parse(weights_name)  # ParameterError if malformed
            _check_halo(self.online, self.crop)
        self._set_derivers(opened)
        self.tiles = [t.tile_id for t in opened]
        self.shapes = [tuple(int(s) for s in t.shape) for t in opened]
        self.in_channels = next(iter(bands.values()))
        dtypes = {np.dtype(t.image.dtype).name for t in opened}
        #: the images' dtype ("uint8", "uint16"), None when the tiles mix them
        self.image_dtype = dtypes.pop() if len(dtypes) == 1 else None
        pixels = np.array([h * w for h, w in self.shapes], dtype=np.float64)
        self.probabilities = pixels / pixels.sum()
        counts = [t.meta.class_pixels for t in opened]
        self.class_pixels = np.array(
            [list(c or [0] * self.num_classes) for c in counts], dtype=np.int64
        ).reshape(len(opened), -1)
        #: non-ignore label pixels of the tiles; None when a tile lacks class_pixels
        self.labelled_pixels = (
            None if any(c is None for c in counts) else int(self.class_pixels.sum())
        )
        self._set_normalization(opened, pixels)
        self._arrays: dict | None = None
        self._counts: dict | None = None
        self._pid: int | None = None

    def _set_derivers(self, opened) -> None:
        """Per tile, None where the weights are read from the store, else the Deriver of
        their values; the device-side deriver of ``"window"`` mode when every tile derives.

        Raises
        ------
        StoreError
            A weights name a tile cannot give.
        """
        # per tile: None where the weights are stored, else the Deriver of their values
        self._derivers: list = [None] * len(opened)
        if self.store_weights is not None:
            for i, t in enumerate(opened):
                w = t.weights(self.store_weights)  # StoreError: not a name, or a k without counts
                if isinstance(w, DerivedWeights):
                    self._derivers[i] = w.deriver
        # derive on the training device ("window" mode) when every tile derives
        self._torch_deriver = None
        if self.output == "window" and opened and all(d is not None for d in self._derivers):
            try:
                self._torch_deriver = TorchDeriver(
                    self._derivers[0].spec, [d.ranges for d in self._derivers],
                    ignore_index=self.ignore_index,
                )  # fmt: skip
            except ValueError:  # k too large for a table on the device: derive in the workers
                self._torch_deriver = None

    def _set_normalization(self, opened, pixels: np.ndarray) -> None:
        """Per-tile and pooled image mean/std from the tiles' attrs, and the tables that
        :meth:`warp` normalizes with (by :attr:`normalize`)."""
        tile_stats = []
        for t in opened:
            mean, std = t.meta.image_mean, t.meta.image_std
            if mean is None or std is None or len(mean) != self.in_channels:
                raise StoreError(f"tile {t.tile_id!r} lacks image_mean/image_std attrs")
            tile_stats.append((np.asarray(mean, np.float64), np.asarray(std, np.float64)))
        self.tile_mean_std = {
            tid: (m.astype(np.float32), _safe_std(s).astype(np.float32))
            for tid, (m, s) in zip(self.tiles, tile_stats, strict=True)
        }
        mean, std = pooled_mean_std([m for m, _ in tile_stats], [s for _, s in tile_stats], pixels)
        self.mean = mean.astype(np.float32)
        self.std = _safe_std(std).astype(np.float32)
        if self.normalize == "tile":
            table = [self.tile_mean_std[t] for t in self.tiles]
            self.mean_table = torch.tensor(np.stack([m for m, _ in table]))
            self.std_table = torch.tensor(np.stack([s for _, s in table]))
        else:
            self.mean_table = torch.tensor(np.tile(self.mean, (len(self.tiles), 1)))
            self.std_table = torch.tensor(np.tile(self.std, (len(self.tiles), 1)))

    @property
    def store_weights(self) -> str | None:
        """Name of the weights array read from the store (None for none or ``online:``)."""
        return None if getattr(self, "online", None) else self.weights_name

    @property
    def margin(self) -> int:
        """Pixels the label is resampled beyond the crop on each side (k of ``online:``)."""
        return self.online.halo if self.online else 0

    # -- pickling for DataLoader workers: reopen the store in each process ---------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None
        state["_counts"] = None
        state["_pid"] = None
        state["_root"] = None
        return state

    def _tile_arrays(self, tile: str):
        """(image, label, weights) readers of a tile; weights None when derived or absent."""
        if self._arrays is None or self._pid != os.getpid():
            same = self._root is not None and self._root_pid == os.getpid()
            root = self._root if same else open_store(self.store_path)
            arrays, counts = {}, {}
            for i, tid in enumerate(self.tiles):
                t = open_tile(root, tid)
                t.fast_reads = self.reader == "auto"
                stored = self.store_weights is not None and self._derivers[i] is None
                arrays[tid] = (t.reader("image"), t.reader("label"),
                               t.reader(self.store_weights) if stored else None)  # fmt: skip
                if self._derivers[i] is not None:
                    counts[tid] = [t.reader(f"affinity/{counts_name(k)}")
                                   for k in self._derivers[i].spec.ks]  # fmt: skip
            self._arrays, self._counts, self._pid = arrays, counts, os.getpid()
        return self._arrays[tile]

    def __len__(self) -> int:
        return self.length

    def sample_params(self, index: int) -> CropParams:
        """The random parameters of item ``index`` (a function of seed and index only)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise IndexError(f"`index` must be an integer >= 0, got {index!r}")
        return sample_params(
            self.seed, int(index), self.tiles, self.shapes, self.probabilities, self.augment
        )

    def read_window(self, params: CropParams) -> dict:
        """Read the tile window of ``params`` from the store (only its chunks).

        Returns
        -------
        dict with ``image`` (h, w, C) as stored (uint8/uint16), ``label`` (h, w) as
        stored, ``weight`` (h, w) float or None, ``window`` ``(y0, y1, x0, x1)``.
        """
        image_arr, label_arr, weight_arr = self._tile_arrays(params.tile)
        shape = self.shapes[params.tile_index]
        y0, y1, x0, x1 = self._grown(params).window(shape)
        label = label_arr.read(y0, y1, x0, x1)
        out = {
            "image": image_arr.read(y0, y1, x0, x1),
            "label": label,
            "weight": None if weight_arr is None else weight_arr.read(y0, y1, x0, x1),
            "window": (y0, y1, x0, x1),
        }
        deriver = self._derivers[params.tile_index]
        if deriver is not None:
            counts = [c.read(y0, y1, x0, x1) for c in self._counts[params.tile]]
            if self._torch_deriver is not None:
                out["counts"] = counts  # derived in warp(), on the training device
            else:
                out["weight"] = deriver(counts, label)
        return out

    def _grown(self, params: CropParams) -> CropParams:
        """``params`` with the crop grown by :attr:`margin` pixels each side (same centre,
        so the grown crop's pixel ``(u + margin, v + margin)`` is the crop's ``(u, v)``)."""
        if not self.margin:
            return params
        h, w = params.crop
        return replace(params, crop=(h + 2 * self.margin, w + 2 * self.margin), _matrix=None)

    def window_item(self, index: int) -> dict:
        """Item ``index`` in ``"window"`` form (input of :func:`collate_windows`)."""
        params = self.sample_params(index)
        win = self.read_window(params)
        image, label = win["image"], win["label"]
        if image.dtype == np.uint16:
            image = image.astype(np.int32)
        if label.dtype not in (np.uint8, np.int16, np.int32, np.int64):
            label = label.astype(np.int32)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "label": torch.from_numpy(np.ascontiguousarray(label)),
            "theta": torch.from_numpy(self._window_matrix(params, win["window"])),
            "tile_index": params.tile_index,
            "index": int(index),
            "blur_sigma": params.blur_sigma,
            "tile": params.tile,
        }
        if win["weight"] is not None:
            item["weight"] = torch.from_numpy(np.ascontiguousarray(win["weight"]))
        if win.get("counts") is not None:
            counts = np.stack(win["counts"])  # (K, h, w) uint16|uint32, as signed bits
            signed = np.int16 if counts.dtype == np.uint16 else np.int32
            item["counts"] = torch.from_numpy(counts.view(signed))
        return item

    @staticmethod
    def _window_matrix(params: CropParams, window) -> np.ndarray:
        """:meth:`CropParams.matrix` relative to the top-left corner of ``window``."""
        y0, _, x0, _ = window
        m = params.matrix().copy()
        m[:, 2] -= (x0, y0)
        return m

    @property
    def collate(self):
        """``collate_fn`` for a DataLoader over this dataset (either output mode)."""
        if self.output == "window":
            return partial(_collate_windows, ignore_index=self.ignore_index)
        return None  # torch's default collate

    def warp(self, batch: dict, device: torch.device | str | None = None) -> dict:
        """Resample a collated ``"window"`` batch on ``device``; crops pass through (moved).

        Returns ``image`` (N, C, h, w) float32, ``label`` (N, h, w) int64, ``weight``
        (N, h, w) float32, ``tile`` (list of N ids) and ``index`` (N,).
        """
        if "theta" not in batch:
            dev = torch.device(device) if device is not None else batch["image"].device
            out = {k: batch[k].to(dev, non_blocking=True) for k in ("image", "label", "weight")}
            return {**out, "tile": list(batch["tile"]), "index": batch["index"]}
        if "counts" in batch:
            dev = torch.device(device) if device is not None else batch["image"].device
            label = batch["label"].to(dev, non_blocking=True)
            weight = self._torch_deriver(batch["counts"].to(dev, non_blocking=True), label,
                                         batch["tile_index"].to(dev))  # fmt: skip
            batch = {**batch, "label": label, "weight": weight}
        out = warp_windows(
            batch,
            mean=self.mean_table,
            std=self.std_table,
            crop=self.crop,
            ignore_index=self.ignore_index,
            blur_kernel=self.augment.blur_kernel,
            device=device,
            margin=self.margin,
        )
        if self.online:
            grown = out.pop("label_margin", out["label"])  # no margin for k = 0
            out["weight"] = self.online_weights(grown, out["label"])
        return out

    def online_weights(self, label_margin: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``online:`` weights of a batch: exact Eq. 1 counts of the grown labels
        ``label_margin`` (N, h + 2k, w + 2k), cut to the crop, transformed; 0 where
        ``label`` (N, h, w) is ignored. Computed where the labels are (no host sync)."""
        classes = _online.known_classes(self.num_classes, self.ignore_index)
        return _online.label_weights(label_margin, label, self.online, classes=classes,
                                     ignore_index=self.ignore_index)  # fmt: skip

    def __getitem__(self, index: int) -> dict:
        item = self.window_item(index)
        if self.output == "window":
            return item
        out = self.warp(_collate_windows([item], ignore_index=self.ignore_index), "cpu")
        return {
            "image": out["image"][0],
            "label": out["label"][0],
            "weight": out["weight"][0],
            "tile": out["tile"][0],
            "index": int(index),
        }

    def __repr__(self) -> str:
        return (
            f"StoreCropDataset({self.store_path!r}, weights_name={self.weights_name!r}, "
            f"crop={self.crop}, tiles={self.tiles}, length={self.length}, seed={self.seed}, "
            f"output={self.output!r})"
        )


def _check_halo(spec: WeightsSpec, crop: tuple[int, int]) -> None:
    """Refuse ``online:`` weights whose grown crop exceeds :data:`MAX_GROWN_PIXELS`."""
    h, w = crop
    k = spec.halo
    if (h + 2 * k) * (w + 2 * k) <= MAX_GROWN_PIXELS:
        return
    kmax = 0
    while (h + 2 * (kmax + 1)) * (w + 2 * (kmax + 1)) <= MAX_GROWN_PIXELS:
        kmax += 1
    raise ParameterError(
        "weights",
        f"{spec.name!r}: the label halo of k = {k} grows each {h} x {w} crop to "
        f"{h + 2 * k} x {w + 2 * k} pixels, more than the {MAX_GROWN_PIXELS} "
        f"(8192 x 8192) online weights can count per crop; use k <= {kmax} with this crop",
    )


def _collate_windows(items, *, ignore_index: int) -> dict:
    """:func:`collate_windows`, plus the count windows of derived weights padded with 0
    (``counts`` (N, K, Hp, Wp); their padding is ignore in ``label``, so weight 0)."""
    if items[0].get("counts") is None:
        return collate_windows(items, ignore_index=ignore_index)
    out = collate_windows([{k: v for k, v in it.items() if k != "counts"} for it in items],
                          ignore_index=ignore_index)  # fmt: skip
    n, hp, wp = out["label"].shape
    first = items[0]["counts"]
    counts = torch.zeros((n, first.shape[0], hp, wp), dtype=first.dtype)
    for i, it in enumerate(items):
        c = it["counts"]
        counts[i, :, : c.shape[1], : c.shape[2]] = c
    out["counts"] = counts
    return out


def _safe_std(std: np.ndarray) -> np.ndarray:
    std = np.asarray(std, dtype=np.float64)
    return np.where(std > 1e-6, std, 1.0)


def write_preview(
    store_path: str | os.PathLike,
    weights_name: str | None,
    n: int,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    augment: AugmentConfig | None = None,
    crop: int | Sequence[int] | None = None,
    tiles: str | Sequence[str] | None = None,
    normalize: str = "store",
) -> list[dict]:
    """Write ``n`` augmented (image, label, weight) samples as PNGs and .npy files.

    What ``npa-train preview`` calls; the samples are items ``0 .. n-1`` of the
    :class:`StoreCropDataset` a ``fit`` with the same store, seed and augmentation trains
    on first. Per sample ``i`` (``NNN`` = ``i`` with three digits), in ``out``:

    * ``NNN_image.png``: the image (first three bands) de-normalized to its stored
      values (8-bit images as they are, others stretched 2–98 %);
    * ``NNN_label.png``: labels colour-coded with the store's palette, ignore black;
    * ``NNN_weight.png``: the weights as a viridis heat map, ignore black;
    * ``NNN_triplet.png``: the three side by side, plus the label blended over the image,
      under titles (tile, scale, rotation and mirrors of the crop; weights name) and with
      the weights' colour bar;
    * ``NNN_image.npy`` (C, h, w) float32 normalized, ``NNN_label.npy`` (h, w) int64,
      ``NNN_weight.npy`` (h, w) float32: exactly what the model and the loss get;

    ``legend.png`` naming the class colours, and ``preview.json`` with each sample's
    parameters (tile, centre, scale, angle, mirrors, blur) and weight range.

    Returns
    -------
    list of dict, one per sample (what ``preview.json`` holds)

    Raises
    ------
    ValueError
        ``n`` < 1, or the arguments of :class:`StoreCropDataset`.
    StoreError
        As :class:`StoreCropDataset`.
    """
    import json

    from PIL import Image

    from npa_precompute.colors import (
        class_palette,
        heatmap_rgb,
        label_rgb,
        legend_image,
        stretch_image,
    )
    from npa_precompute.viz import panel_row

    check_int("n", n, minimum=1)
    ds = StoreCropDataset(store_path, weights_name, augment=augment, crop=crop, tiles=tiles,
                          length=int(n), seed=seed, normalize=normalize)  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    palette = class_palette(ds.info)
    root = open_store(ds.store_path)
    integer8 = open_tile(root, ds.tiles[0]).image.dtype == np.uint8
    records = []
    for i in range(int(n)):
        item = ds[i]
        params = ds.sample_params(i)
        image, label = item["image"].numpy(), item["label"].numpy()
        weight = item["weight"].numpy()
        mean = ds.mean_table[params.tile_index].numpy()[:, None, None]
        std = ds.std_table[params.tile_index].numpy()[:, None, None]
        raw = (image * std + mean).transpose(1, 2, 0)
        if integer8:
            rgb = np.clip(np.rint(raw[..., :3]), 0, 255).astype(np.uint8)
            if rgb.shape[2] < 3:
                rgb = np.repeat(rgb[..., :1], 3, axis=2)
        else:
            rgb = (stretch_image(raw) * 255).round().astype(np.uint8)
        ignored = label == ds.ignore_index
        lab_rgb = label_rgb(label, palette, ds.ignore_index)
        w_rgb, lo, hi = heatmap_rgb(weight, mask=ignored)
        overlay = np.where(ignored[..., None], rgb, (0.5 * rgb + 0.5 * lab_rgb).round()).astype(
            np.uint8
        )
        stem = f"{i:03d}"
        Image.fromarray(rgb).save(out / f"{stem}_image.png")
        Image.fromarray(lab_rgb).save(out / f"{stem}_label.png")
        Image.fromarray(w_rgb).save(out / f"{stem}_weight.png")
        flips = [n for n, on in (("h-mirror", params.hflip), ("v-mirror", params.vflip),
                                 ("transposed", params.transpose)) if on]  # fmt: skip
        titles = [f"image {params.tile}, scale x{params.scale:.2f}, rotated "
                  f"{params.angle:+.1f}°{''.join(', ' + f for f in flips)}",
                  "label (key: legend.png)", f"weights {weights_name or 'none (1)'}",
                  "label over image"]  # fmt: skip
        panel_row([rgb, lab_rgb, w_rgb, overlay], titles, colorbar=(2, lo, hi)).save(
            out / f"{stem}_triplet.png"
        )
        np.save(out / f"{stem}_image.npy", image)
        np.save(out / f"{stem}_label.npy", label)
        np.save(out / f"{stem}_weight.npy", weight)
        records.append({**params.to_dict(), "weight_min": lo, "weight_max": hi,
                        "ignored_fraction": float(ignored.mean())})  # fmt: skip
    meta = {
        "store": ds.store_path,
        "weights": weights_name,
        "seed": seed,
        "augment": ds.augment.to_dict(),
        "normalize": normalize,
        "samples": records,
    }
    (out / "preview.json").write_text(json.dumps(meta, indent=2) + "\n")
    legend_image(ds.info.classes, palette).save(out / "legend.png")
    return records

"""Random training crops streamed from the weight store written by ``npa-precompute``.

Each item is one random crop of (image, label, weight). Only the store chunks the
crop's window touches are read (zarr slicing ``arr[y0:y1, x0:x1]``); tiles are
never loaded whole. Crop ``i`` is a function of ``(seed, i)`` alone, so a seed
reproduces the same crops whatever the number of DataLoader workers, and workers,
which receive different indices, never produce identical augmentations.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from npa_precompute.store import StoreError, list_tiles, open_store, open_tile, store_info

__all__ = ["CropParams", "StoreCropDataset", "parse_crop", "parse_tiles"]

_NORMALIZE = ("store", "tile")


@dataclass(frozen=True)
class CropParams:
    """Where crop ``i`` comes from and how it is flipped.

    ``y0, x0``: top-left corner of the window in the tile; the window is
    ``[y0, y0 + h) x [x0, x0 + w)`` clipped to the tile, the rest padded. The
    transforms are applied to the read window in this order: ``transpose`` (swap
    y and x), then ``vflip`` (reverse rows), then ``hflip`` (reverse columns).
    """

    tile: str
    y0: int
    x0: int
    h: int
    w: int
    hflip: bool = False
    vflip: bool = False
    transpose: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def parse_crop(crop: int | Sequence[int]) -> tuple[int, int]:
    """``256`` -> ``(256, 256)``; ``(h, w)`` -> ``(h, w)``.

    Raises
    ------
    TypeError, ValueError
        Not one or two positive integers.
    """
    if isinstance(crop, (int, np.integer)) and not isinstance(crop, bool):
        crop = (int(crop), int(crop))
    if not isinstance(crop, Sequence) or isinstance(crop, str) or len(crop) != 2:
        raise TypeError(f"`crop` must be an int or a pair (h, w) of ints, got {crop!r}")
    if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in crop):
        raise TypeError(f"`crop` must hold ints, got {crop!r}")
    h, w = int(crop[0]), int(crop[1])
    if h < 1 or w < 1:
        raise ValueError(f"`crop` must be >= 1, got {crop!r}")
    return h, w


def parse_tiles(tiles: str | Sequence[str] | None) -> list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``; None or ``""`` -> None (all tiles).

    Raises
    ------
    ValueError
        A repeated tile id.
    """
    if tiles is None:
        return None
    if isinstance(tiles, str):
        tiles = [t.strip() for t in tiles.split(",")]
    tiles = [str(t) for t in tiles if str(t).strip()]
    if not tiles:
        return None
    dup = sorted({t for t in tiles if tiles.count(t) > 1})
    if dup:
        raise ValueError(f"`tiles` lists {', '.join(dup)} more than once")
    return tiles


def pooled_mean_std(means, stds, counts) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of the union of tiles from each tile's own mean/std/pixels."""
    m = np.asarray(means, dtype=np.float64)
    s = np.asarray(stds, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)[:, None]
    mean = (n * m).sum(0) / n.sum()
    var = (n * (s**2 + m**2)).sum(0) / n.sum() - mean**2
    return mean, np.sqrt(np.maximum(var, 0.0))


class StoreCropDataset(Dataset):
    """Random (image, label, weight) crops from an ``npa-precompute`` weight store.

    Item ``i`` draws, from a generator seeded with ``(seed, i)``: a tile (with
    probability proportional to its pixel count), a window of size ``crop`` inside
    it (uniform over the valid positions), and random flips (each with probability
    1/2; also a random transpose when ``rotate``, which with the flips gives all
    eight 90° rotations and reflections). Only that window is read from the store,
    and the same flips are applied to image, label and weight. A tile smaller than
    the crop is padded: label ``ignore_index``, weight 0, image 0 (after
    normalization, i.e. the mean).

    Parameters
    ----------
    store_path : str or PathLike
        Store written by ``npa-precompute run --images ...``.
    weights_name : str or None
        Weights array to return (e.g. ``"k32_log10_L0.5"``); None returns weight 1 at
        every pixel inside the tile (0 in padding): plain cross-entropy.
    crop : int or (int, int), default 256
        Crop size ``(h, w)``.
    tiles : sequence of str, comma-separated str, or None
        Tile ids to draw from; None (default) uses every complete tile of the store.
    length : int, default 10000
        Number of items (``len(dataset)``); item ``i`` is defined for any ``i >= 0``.
    seed : int, default 0
    flip : bool, default True
        Random horizontal and vertical flips.
    rotate : bool, default False
        Random transpose as well (square crops only).
    normalize : {"store", "tile"}, default "store"
        Per-band image normalization: with the mean/std of all the dataset's tiles
        pooled (from each tile's ``image_mean``/``image_std`` attrs, weighted by
        pixel count), or with each tile's own.

    Returns (per item)
    ------------------
    dict with ``image`` (C, h, w) float32, ``label`` (h, w) int64 and ``weight``
    (h, w) float32 tensors.

    Raises
    ------
    StoreError
        No store at ``store_path``; an unknown or incomplete tile in ``tiles`` (the
        message lists the tiles); no complete tile; a tile without an image; a
        ``weights_name`` missing from a tile (the message lists the names it has);
        tiles with different band counts.
    TypeError, ValueError
        Bad ``crop``, ``length``, ``seed``, ``normalize``, or ``rotate`` with a
        non-square crop.
    """

    def __init__(
        self,
        store_path: str | os.PathLike,
        weights_name: str | None = None,
        *,
        crop: int | Sequence[int] = 256,
        tiles: str | Sequence[str] | None = None,
        length: int = 10_000,
        seed: int = 0,
        flip: bool = True,
        rotate: bool = False,
        normalize: str = "store",
    ) -> None:
        self.crop = parse_crop(crop)
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise ValueError(f"`length` must be an integer >= 1, got {length!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"`seed` must be an integer >= 0, got {seed!r}")
        if normalize not in _NORMALIZE:
            raise ValueError(f"`normalize` must be one of {_NORMALIZE}, got {normalize!r}")
        if rotate and self.crop[0] != self.crop[1]:
            raise ValueError(f"`rotate` needs a square crop, got {self.crop}")
        self.store_path = str(Path(store_path))
        self.weights_name = weights_name
        self.length = int(length)
        self.seed = int(seed)
        self.flip = bool(flip)
        self.rotate = bool(rotate)
        self.normalize = normalize

        root = open_store(self.store_path)
        info = store_info(root)
        self.classes = list(info["classes"])
        self.num_classes = int(info["num_classes"])
        self.ignore_index = int(info["ignore_index"])
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
        if weights_name is not None:
            for t in opened:
                t.weights(weights_name)  # raises StoreError listing the names the tile has
        self.tiles = [t.tile_id for t in opened]
        self.shapes = [tuple(int(s) for s in t.shape) for t in opened]
        self.in_channels = next(iter(bands.values()))
        pixels = np.array([h * w for h, w in self.shapes], dtype=np.float64)
        self.probabilities = pixels / pixels.sum()
        tile_stats = []
        for t in opened:
            mean, std = t.attrs.get("image_mean"), t.attrs.get("image_std")
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
        self._arrays: dict | None = None
        self._pid: int | None = None

    # -- pickling for DataLoader workers: reopen the store in each process ---------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None
        state["_pid"] = None
        return state

    def _tile_arrays(self, tile: str):
        if self._arrays is None or self._pid != os.getpid():
            root = open_store(self.store_path)
            arrays = {}
            for tid in self.tiles:
                t = open_tile(root, tid)
                w = t.weights(self.weights_name) if self.weights_name is not None else None
                arrays[tid] = (t.image, t.label, w)
            self._arrays, self._pid = arrays, os.getpid()
        return self._arrays[tile]

    def __len__(self) -> int:
        return self.length

    def sample_params(self, index: int) -> CropParams:
        """The tile, window and flips of item ``index`` (a function of seed and index)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise IndexError(f"`index` must be an integer >= 0, got {index!r}")
        rng = np.random.default_rng((self.seed, int(index)))
        k = int(rng.choice(len(self.tiles), p=self.probabilities))
        (th, tw), (ch, cw) = self.shapes[k], self.crop
        y0 = int(rng.integers(0, th - ch + 1)) if th > ch else 0
        x0 = int(rng.integers(0, tw - cw + 1)) if tw > cw else 0
        hflip = vflip = transpose = False
        if self.flip:
            hflip, vflip = (bool(b) for b in rng.integers(0, 2, size=2))
        if self.rotate:
            transpose = bool(rng.integers(0, 2))
        return CropParams(self.tiles[k], y0, x0, ch, cw, hflip, vflip, transpose)

    def read_window(self, params: CropParams) -> dict[str, np.ndarray]:
        """Read and pad the window of ``params`` (no flips, no normalization).

        Returns ``image`` (h, w, C) float32 normalized (0 in padding), ``label`` (h, w)
        int64 (ignore in padding), ``weight`` (h, w) float32 (0 in padding).
        """
        image_arr, label_arr, weight_arr = self._tile_arrays(params.tile)
        th, tw = label_arr.shape
        y1, x1 = min(params.y0 + params.h, th), min(params.x0 + params.w, tw)
        ys, xs = slice(params.y0, y1), slice(params.x0, x1)
        rh, rw = y1 - params.y0, x1 - params.x0
        if self.normalize == "tile":
            mean, std = self.tile_mean_std[params.tile]
        else:
            mean, std = self.mean, self.std
        image = np.zeros((params.h, params.w, self.in_channels), dtype=np.float32)
        image[:rh, :rw] = (np.asarray(image_arr[ys, xs], dtype=np.float32) - mean) / std
        label = np.full((params.h, params.w), self.ignore_index, dtype=np.int64)
        label[:rh, :rw] = label_arr[ys, xs]
        weight = np.zeros((params.h, params.w), dtype=np.float32)
        if weight_arr is None:
            weight[:rh, :rw] = 1.0
        else:
            weight[:rh, :rw] = weight_arr[ys, xs]
        return {"image": image, "label": label, "weight": weight}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        params = self.sample_params(index)
        win = self.read_window(params)
        image, label, weight = win["image"], win["label"], win["weight"]
        if params.transpose:
            image, label, weight = image.transpose(1, 0, 2), label.T, weight.T
        if params.vflip:
            image, label, weight = image[::-1], label[::-1], weight[::-1]
        if params.hflip:
            image, label, weight = image[:, ::-1], label[:, ::-1], weight[:, ::-1]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": torch.from_numpy(np.ascontiguousarray(label)),
            "weight": torch.from_numpy(np.ascontiguousarray(weight)),
        }

    def __repr__(self) -> str:
        return (
            f"StoreCropDataset({self.store_path!r}, weights_name={self.weights_name!r}, "
            f"crop={self.crop}, tiles={self.tiles}, length={self.length}, seed={self.seed})"
        )


def _safe_std(std: np.ndarray) -> np.ndarray:
    std = np.asarray(std, dtype=np.float64)
    return np.where(std > 1e-6, std, 1.0)

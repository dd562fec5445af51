"""Aligned augmentation of (image, label, weight) crops (Feng et al. 2020, §4.2).

The paper's recipe: random mirror, random Gaussian blur, random resize with a scale
in ``[0.5, 2.0]``, random rotation in ``[-10°, 10°]`` and a random 513 × 513 crop.
Here all geometric steps of one sample are one affine map from the output crop back
to the tile, drawn once per sample (:func:`sample_params`) and applied to image,
label and weight alike (:func:`warp_windows`), so the three can never disagree.

How a sample is made:

1. :func:`sample_params` draws, from a generator seeded with ``(seed, index)``: a
   tile, the scale ``s``, the angle, the mirrors, the blur and the crop position. The
   crop position is uniform over the positions where the crop lies inside the
   resized tile (as in "resize, then crop"); a resized tile smaller than the crop is
   placed at a uniformly random position inside the crop.
2. :meth:`CropParams.window` is the tile window the crop's pixels map into, plus one
   pixel of margin for the interpolation, clipped to the tile. Only that window is
   read from the store (never the whole tile).
3. :func:`warp_windows` resamples the windows of a batch with one
   ``F.affine_grid`` / ``F.grid_sample`` call each for the bilinear channels and the
   labels, on whichever device the tensors are on (the training device): labels with
   nearest neighbour (so a crop never holds a value that was not in the tile), the
   image bilinearly, the weights bilinearly *among non-ignored pixels* (the stored
   weights are 0 at ignore pixels; averaging ``w·v`` and ``v`` with ``v`` the
   non-ignore mask and dividing keeps a valid pixel next to the ignore band from being
   pulled towards 0, and keeps every weight between its neighbours' values).
   Pixels that map outside the tile (rotated or scaled in from outside) get
   label = ``ignore_index``, weight 0 and image 0, i.e. the normalization mean.
4. The image is then blurred (image only) with a Gaussian of the sample's sigma.

When every sample of a batch is a pure integer shift with mirrors (scale 1, angle
0: :meth:`AugmentConfig.identity`, or ``scale=(1, 1), rotation=0``), the crop is cut
by integer indexing instead, so it equals the stored values exactly.

Normalization: ``(image - mean) / std`` per band with the tile statistics that
``npa-precompute run`` stored (pooled over the training tiles by default), before
resampling, so that the fill value 0 is the mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from npa_precompute.errors import ParameterError
from npa_precompute.params import check_int, check_number, parse_size

__all__ = [
    "AugmentConfig",
    "CropParams",
    "collate_windows",
    "sample_params",
    "warp_windows",
]


def _pair(name: str, value, *, cast=float) -> tuple:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return (cast(value), cast(value))
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(f"`{name}` must be a number or a pair (low, high), got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float, np.number)) for v in value):
        raise TypeError(f"`{name}` must hold numbers, got {value!r}")
    return (cast(value[0]), cast(value[1]))


def parse_crop(crop) -> tuple[int, int]:
    """``513`` -> ``(513, 513)``; ``(h, w)`` -> ``(h, w)``
    (:func:`~npa_precompute.params.parse_size` for the argument ``crop``).

    Raises
    ------
    TypeError, ValueError
        Not one or two positive integers.
    """
    return parse_size(crop, name="crop")


@dataclass(frozen=True)
class AugmentConfig:
    """What :func:`sample_params` draws per sample. Defaults: the paper's recipe.

    Attributes
    ----------
    crop : (int, int), default (513, 513)
        Output size ``(h, w)``.
    scale : (float, float), default (0.5, 2.0)
        Resize factor, uniform in ``[low, high]`` (``> 0``); ``(1, 1)`` disables it.
    rotation : float, default 10.0
        Angle uniform in ``[-rotation, rotation]`` degrees; 0 disables it.
    hflip, vflip : bool, default True
        Mirror left-right / top-bottom, each with probability 1/2 (aerial images have
        no "up", so both mirrors are used).
    transpose : bool, default False
        Also swap rows and columns with probability 1/2 (with both mirrors: all eight
        90° rotations and reflections). Needs a square crop.
    blur_p : float, default 0.5
        Probability of a Gaussian blur of the image (never of label or weight).
    blur_sigma : (float, float), default (1.1, 1.1)
        Blur sigma in output pixels, uniform in ``[low, high]``; 1.1 is what OpenCV uses
        for the 5 × 5 kernel of the PSPNet reference augmentation.
    blur_kernel : int, default 5
        Odd kernel size of the blur.
    """

    crop: tuple[int, int] = (513, 513)
    scale: tuple[float, float] = (0.5, 2.0)
    rotation: float = 10.0
    hflip: bool = True
    vflip: bool = True
    transpose: bool = False
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (1.1, 1.1)
    blur_kernel: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop", parse_crop(self.crop))
        scale = _pair("scale", self.scale)
        if not (0 < scale[0] <= scale[1] < math.inf):
            raise ParameterError("scale", f"must satisfy 0 < low <= high, got {self.scale!r}")
        object.__setattr__(self, "scale", scale)
        rot = check_number("rotation", self.rotation, minimum=0, maximum=180)
        object.__setattr__(self, "rotation", rot)
        if not isinstance(self.blur_p, (int, float)) or not 0 <= self.blur_p <= 1:
            raise ParameterError("blur_p", f"must be a probability in [0, 1], got {self.blur_p!r}")
        object.__setattr__(self, "blur_p", float(self.blur_p))
        sig = _pair("blur_sigma", self.blur_sigma)
        if not (0 < sig[0] <= sig[1] < math.inf):
            raise ValueError(f"`blur_sigma` must satisfy 0 < low <= high, got {self.blur_sigma!r}")
        object.__setattr__(self, "blur_sigma", sig)
        k = check_int("blur_kernel", self.blur_kernel, minimum=1)
        if k % 2 == 0:
            raise ParameterError("blur_kernel", f"must be an odd integer >= 1, got {k!r}")
        object.__setattr__(self, "blur_kernel", k)
        for name in ("hflip", "vflip", "transpose"):
            object.__setattr__(self, name, bool(getattr(self, name)))
        if self.transpose and self.crop[0] != self.crop[1]:
            raise ParameterError("transpose", f"needs a square crop, got {self.crop}")

    @classmethod
    def identity(cls, crop=(513, 513), **kw) -> AugmentConfig:
        """Only a random crop position: no resize, rotation, mirror or blur (plus ``kw``)."""
        base = dict(scale=(1.0, 1.0), rotation=0.0, hflip=False, vflip=False, blur_p=0.0)
        return cls(crop=crop, **{**base, **kw})

    @classmethod
    def from_options(
        cls, crop, *, augment=True, scale=(0.5, 2.0), rotation=10.0, flip=True, rotate=False,
        blur=0.5,
    ) -> AugmentConfig:  # fmt: skip
        """The configuration behind the command-line options of ``fit`` and ``preview``.

        ``augment=False`` gives :meth:`identity` (``rotate`` still adds transposes);
        ``flip`` turns both mirrors on or off; ``blur`` is the blur probability.
        """
        if not augment:
            return cls.identity(crop, transpose=rotate)
        return cls(crop=crop, scale=scale, rotation=rotation, hflip=flip, vflip=flip,
                   transpose=rotate, blur_p=blur)  # fmt: skip

    @property
    def is_integral(self) -> bool:
        """True when every crop is an integer shift with mirrors (exact, no resampling)."""
        return self.scale == (1.0, 1.0) and self.rotation == 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> AugmentConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown augmentation settings {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class CropParams:
    """Everything random about one sample; :meth:`matrix` maps crop pixels to tile pixels.

    Coordinates are pixel centres: tile pixel ``(row y, column x)`` sits at ``(x, y)``;
    the crop's pixel ``(v, u)`` at ``(u, v)``.

    Attributes
    ----------
    tile : tile id; ``tile_index`` its position in the dataset's tile list
    index : the dataset index the sample belongs to
    center : ``(y, x)``, the tile point the crop's centre maps to
    scale : resize factor (> 1 enlarges: the crop covers ``crop / scale`` tile pixels)
    angle : rotation in degrees
    hflip, vflip, transpose : mirrors of the crop (left-right, top-bottom, swap axes)
    blur_sigma : Gaussian blur sigma of the image in crop pixels (0: no blur)
    crop : ``(h, w)`` of the output
    """

    tile: str
    tile_index: int
    index: int
    center: tuple[float, float]
    scale: float
    angle: float
    hflip: bool
    vflip: bool
    transpose: bool
    blur_sigma: float
    crop: tuple[int, int]
    _matrix: np.ndarray = field(default=None, repr=False, compare=False)

    def matrix(self) -> np.ndarray:
        """``(2, 3)`` float64 ``A`` with ``[x, y] = A @ [u, v, 1]`` (crop pixel -> tile pixel)."""
        if self._matrix is not None:
            return self._matrix
        ch, cw = self.crop
        a = math.radians(self.angle)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        lin = np.diag([-1.0 if self.hflip else 1.0, -1.0 if self.vflip else 1.0])
        if self.transpose:
            lin = np.array([[0.0, 1.0], [1.0, 0.0]]) @ lin
        lin = rot @ lin / self.scale
        cy, cx = self.center
        pc = np.array([(cw - 1) / 2.0, (ch - 1) / 2.0])
        t = np.array([cx, cy]) - lin @ pc
        m = np.concatenate([lin, t[:, None]], axis=1)
        object.__setattr__(self, "_matrix", m)
        return m

    def is_integral(self) -> bool:
        """True when the crop is an integer shift with mirrors/transpose of the tile."""
        m = self.matrix()
        return _integral_matrix(m)

    def window(self, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``: the tile window the crop reads (margin 1 px, clipped).

        Bilinear sampling at ``x`` uses pixels ``floor(x)`` and ``floor(x) + 1``; one more
        pixel each side absorbs rounding. Never empty.
        """
        h, w = shape
        ch, cw = self.crop
        corners = np.array([[0, 0, 1], [cw - 1, 0, 1], [0, ch - 1, 1], [cw - 1, ch - 1, 1]])
        xy = corners @ self.matrix().T
        if self.is_integral():
            lo, hi = np.round(xy.min(0)).astype(int), np.round(xy.max(0)).astype(int) + 1
        else:
            lo = np.floor(xy.min(0)).astype(int) - 1
            hi = np.floor(xy.max(0)).astype(int) + 3
        x0, x1 = int(np.clip(lo[0], 0, w - 1)), int(np.clip(hi[0], 1, w))
        y0, y1 = int(np.clip(lo[1], 0, h - 1)), int(np.clip(hi[1], 1, h))
        return y0, max(y1, y0 + 1), x0, max(x1, x0 + 1)

    def window_matrix(self, shape: tuple[int, int]) -> np.ndarray:
        """:meth:`matrix` relative to the window's top-left corner."""
        y0, _, x0, _ = self.window(shape)
        m = self.matrix().copy()
        m[:, 2] -= (x0, y0)
        return m

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if not k.startswith("_")}
        d["center"], d["crop"] = list(self.center), list(self.crop)
        return d


def _integral_matrix(m: np.ndarray) -> bool:
    return bool(
        np.all(np.isin(m[:, :2], (-1.0, 0.0, 1.0))) and np.all(m[:, 2] == np.round(m[:, 2]))
    )


def _axis_center(rng: np.random.Generator, length: int, extent: int, s: float, exact: bool):
    """Centre (pixel-centre coordinates) of the crop along one tile axis."""
    scaled = length * s
    if exact:  # integer positions: the crop is an exact integer shift
        if length >= extent:
            o = int(rng.integers(0, length - extent + 1))
        else:
            o = -int(rng.integers(0, extent - length + 1))
        return o + extent / 2.0 - 0.5
    if scaled >= extent:
        centre = (rng.uniform(0.0, scaled - extent) + extent / 2.0) / s
    else:
        centre = (extent / 2.0 - rng.uniform(0.0, extent - scaled)) / s
    return centre - 0.5


def sample_params(
    seed: int,
    index: int,
    tiles: Sequence[str],
    shapes: Sequence[tuple[int, int]],
    probabilities: Sequence[float],
    config: AugmentConfig,
) -> CropParams:
    """Draw the random parameters of sample ``index`` (a function of ``seed, index`` only).

    Parameters
    ----------
    seed, index : non-negative ints
    tiles, shapes : tile ids and their ``(h, w)``
    probabilities : chance of each tile (e.g. proportional to its pixel count)
    config : :class:`AugmentConfig`
    """
    rng = np.random.default_rng((int(seed), int(index)))
    k = int(rng.choice(len(tiles), p=probabilities))
    # Every draw is made whatever the settings, so switching one step off (e.g. the blur)
    # leaves the others of a sample unchanged.
    lo, hi = config.scale
    s = float(rng.uniform(lo, hi))
    angle = float(rng.uniform(-config.rotation, config.rotation)) + 0.0  # -0.0 -> 0.0
    flips = rng.random(3) < 0.5
    hflip = bool(config.hflip and flips[0])
    vflip = bool(config.vflip and flips[1])
    transpose = bool(config.transpose and flips[2])
    blur_u, blur_s = rng.random(), float(rng.uniform(*config.blur_sigma))
    blur = blur_s if blur_u < config.blur_p else 0.0
    (th, tw), (ch, cw) = shapes[k], config.crop
    ext_y, ext_x = (cw, ch) if transpose else (ch, cw)
    exact = s == 1.0 and angle == 0.0
    cy = _axis_center(rng, th, ext_y, s, exact)
    cx = _axis_center(rng, tw, ext_x, s, exact)
    return CropParams(tiles[k], k, int(index), (cy, cx), s, angle, hflip, vflip, transpose,
                      blur, config.crop)  # fmt: skip


# ---- batching ----------------------------------------------------------------------------------
def collate_windows(items: Sequence[Mapping], *, ignore_index: int) -> dict:
    """Stack windows of different sizes into padded tensors (see :func:`warp_windows`).

    Each item: ``image`` (h, w, C), ``label`` (h, w), optional ``weight`` (h, w),
    ``theta`` (2, 3) float64, ``tile_index``, ``index``, ``blur_sigma``, ``tile``.
    Padding: image 0, label ``ignore_index``, weight 0; ``valid_hw`` holds each
    window's own size.
    """
    n = len(items)
    hs = [int(it["label"].shape[0]) for it in items]
    ws = [int(it["label"].shape[1]) for it in items]
    hp, wp = max(hs), max(ws)
    first = items[0]
    c = int(first["image"].shape[2])
    image = torch.zeros((n, hp, wp, c), dtype=first["image"].dtype)
    label = torch.full((n, hp, wp), ignore_index, dtype=first["label"].dtype)
    has_w = first.get("weight") is not None
    weight = torch.zeros((n, hp, wp), dtype=first["weight"].dtype) if has_w else None
    for i, it in enumerate(items):
        h, w = hs[i], ws[i]
        image[i, :h, :w] = it["image"]
        label[i, :h, :w] = it["label"]
        if has_w:
            weight[i, :h, :w] = it["weight"]
    out = {
        "image": image,
        "label": label,
        "valid_hw": torch.tensor(list(zip(hs, ws, strict=True)), dtype=torch.int64),
        "theta": torch.stack([torch.as_tensor(it["theta"], dtype=torch.float64) for it in items]),
        "tile_index": torch.tensor([int(it["tile_index"]) for it in items], dtype=torch.int64),
        "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.int64),
        "blur_sigma": torch.tensor([float(it["blur_sigma"]) for it in items], dtype=torch.float64),
        "tile": [it["tile"] for it in items],
    }
    if has_w:
        out["weight"] = weight
    return out


def _gaussian_taps(sigmas: Sequence[float], size: int) -> np.ndarray:
    r = size // 2
    t = np.arange(-r, r + 1, dtype=np.float64)
    taps = np.exp(-(t[None, :] ** 2) / (2.0 * np.asarray(sigmas, np.float64)[:, None] ** 2))
    return taps / taps.sum(1, keepdims=True)


def gaussian_blur(image: Tensor, sigmas: Sequence[float], kernel: int = 5) -> Tensor:
    """Blur each sample of ``image`` (N, C, H, W) with its own sigma (0: unchanged).

    Separable Gaussian of ``kernel`` taps with reflect padding (OpenCV's default border),
    as sums of shifted slices (depthwise ``conv2d`` is several times slower on CPUs).
    """
    sigmas = [float(s) for s in sigmas]
    todo = [i for i, s in enumerate(sigmas) if s > 0]
    if not todo or kernel == 1:
        return image
    n, c, h, w = image.shape
    r = kernel // 2
    mode = "reflect" if min(h, w) > r else "replicate"
    sub = image[todo] if len(todo) < n else image
    taps = torch.as_tensor(_gaussian_taps([sigmas[i] for i in todo], kernel), dtype=image.dtype)
    taps = taps.to(image.device).view(len(todo), 1, 1, 1, kernel)
    x = F.pad(sub, (0, 0, r, r), mode=mode)
    acc = x[:, :, 0:h] * taps[..., 0]
    for k in range(1, kernel):
        acc.add_(x[:, :, k : k + h] * taps[..., k])
    x = F.pad(acc, (r, r, 0, 0), mode=mode)
    acc = x[..., 0:w] * taps[..., 0]
    for k in range(1, kernel):
        acc.add_(x[..., k : k + w] * taps[..., k])
    if len(todo) == n:
        return acc
    out = image.clone()
    out[todo] = acc
    return out


def _integral_crop(
    img: Tensor, lab: Tensor, wgt: Tensor | None, theta: np.ndarray, valid_hw, crop, ignore: int
):
    """Integer shift + mirrors: cut each crop by indexing (the stored values, exactly).

    Returns image (N, C, h, w) in the input dtype, labels, weights (or None) and the
    mask of crop pixels inside the tile.
    """
    n, c, hp, wp = img.shape
    ch, cw = crop
    dev = img.device
    v, u = torch.meshgrid(torch.arange(ch, device=dev), torch.arange(cw, device=dev), indexing="ij")
    imgs, labs, wgts, insides = [], [], [], []
    for i in range(n):
        m = np.round(theta[i]).astype(np.int64)
        xs = int(m[0, 0]) * u + int(m[0, 1]) * v + int(m[0, 2])
        ys = int(m[1, 0]) * u + int(m[1, 1]) * v + int(m[1, 2])
        h, w = int(valid_hw[i][0]), int(valid_hw[i][1])
        inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        flat = (ys.clamp(0, hp - 1) * wp + xs.clamp(0, wp - 1)).reshape(-1)
        imgs.append(img[i].reshape(c, -1)[:, flat].reshape(c, ch, cw))
        lb = lab[i].reshape(-1)[flat].reshape(ch, cw)
        labs.append(torch.where(inside, lb, torch.full((), ignore, dtype=lb.dtype, device=dev)))
        if wgt is not None:
            wgts.append(wgt[i].reshape(-1)[flat].reshape(ch, cw))
        insides.append(inside)
    wout = torch.stack(wgts) if wgt is not None else None
    return torch.stack(imgs), torch.stack(labs), wout, torch.stack(insides)


def _integral_labels_clamped(lab: Tensor, theta: np.ndarray, valid_hw, crop, margin: int) -> Tensor:
    """Integer shift + mirrors: the labels of the crop grown by ``margin`` pixels each
    side, with tile coordinates clamped into the tile (the edge-replicate padding of
    Eq. 1 at the tile border). ``(N, h + 2·margin, w + 2·margin)``."""
    n, hp, wp = lab.shape
    ch, cw = crop
    dev = lab.device
    rows = torch.arange(-margin, ch + margin, device=dev)
    cols = torch.arange(-margin, cw + margin, device=dev)
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    out = []
    for i in range(n):
        m = np.round(theta[i]).astype(np.int64)
        h, w = int(valid_hw[i][0]), int(valid_hw[i][1])
        xs = (int(m[0, 0]) * u + int(m[0, 1]) * v + int(m[0, 2])).clamp(0, w - 1)
        ys = (int(m[1, 0]) * u + int(m[1, 1]) * v + int(m[1, 2])).clamp(0, h - 1)
        out.append(lab[i].reshape(-1)[(ys * wp + xs).reshape(-1)].reshape(v.shape))
    return torch.stack(out)


def _grown_theta(theta: np.ndarray, margin: int) -> np.ndarray:
    """``theta`` (crop pixel -> window pixel) for the crop grown by ``margin`` pixels each
    side: its pixel ``(u, v)`` is the crop's ``(u - margin, v - margin)``."""
    grown = theta.copy()
    grown[:, :, 2] -= margin * (theta[:, :, 0] + theta[:, :, 1])
    return grown


def _grid(theta: np.ndarray, hp: int, wp: int, crop, device) -> Tensor:
    """grid_sample grid (N, h, w, 2) for crop pixel -> window pixel maps ``theta``.

    Window pixel ``x`` -> grid_sample's normalized coordinate (align_corners=False)
    ``(2 x + 1) / Wp - 1``; composed in float64, evaluated in float32 (error ~1e-4 px).
    """
    ch, cw = crop
    n = theta.shape[0]
    to_norm = np.array([[2.0 / wp, 0, 1.0 / wp - 1], [0, 2.0 / hp, 1.0 / hp - 1], [0, 0, 1]])
    full = np.concatenate([theta, np.tile([[[0.0, 0.0, 1.0]]], (n, 1, 1))], axis=1)
    mats = torch.as_tensor((to_norm[None] @ full)[:, :2], dtype=torch.float32, device=device)
    u = torch.arange(cw, dtype=torch.float32, device=device).view(1, 1, cw)
    v = torch.arange(ch, dtype=torch.float32, device=device).view(1, ch, 1)
    grid = torch.empty((n, ch, cw, 2), dtype=torch.float32, device=device)
    for k in range(2):  # x = a u + (b v + c): a row plus a column, broadcast once
        row = mats[:, k, 0].view(n, 1, 1) * u
        col = mats[:, k, 1].view(n, 1, 1) * v + mats[:, k, 2].view(n, 1, 1)
        torch.add(row, col, out=grid[..., k])
    return grid


def _footprint_inside(theta: np.ndarray, valid_hw, crop) -> bool:
    """True when every crop pixel of every sample maps inside its window (no fill)."""
    ch, cw = crop
    corners = np.array([[0, 0, 1], [cw - 1, 0, 1], [0, ch - 1, 1], [cw - 1, ch - 1, 1]], float)
    for t, (h, w) in zip(theta, valid_hw, strict=True):
        xy = corners @ t.T
        if (
            xy[:, 0].min() < 0
            or xy[:, 1].min() < 0
            or xy[:, 0].max() > w - 1
            or xy[:, 1].max() > h - 1
        ):
            return False
    return True


def warp_windows(
    batch: Mapping,
    *,
    mean: Tensor,
    std: Tensor,
    crop: tuple[int, int],
    ignore_index: int,
    blur_kernel: int = 5,
    device: torch.device | str | None = None,
    margin: int = 0,
) -> dict[str, Tensor]:
    """Resample a batch of windows into aligned crops on ``device`` (batched).

    One ``grid_sample`` (bilinear) for the image bands, ``weight·valid`` and ``valid``
    (``valid``: label not ignore), one (nearest) for the labels. The image is
    normalized as ``(bilinear(raw) - mean · bilinear(inside)) / std``, which equals
    resampling the normalized image with 0 outside the tile. Weights are
    ``bilinear(w·valid) / bilinear(valid)``: interpolated among non-ignored pixels.

    Parameters
    ----------
    batch : output of :func:`collate_windows`
    mean, std : ``(T, C)`` per-tile normalization (indexed by ``batch["tile_index"]``)
    crop : ``(h, w)``
    ignore_index : label of ignored pixels (and of pixels outside the tile)
    blur_kernel : odd kernel size of the image blur
    device : where to compute (default: where ``batch["image"]`` is)
    margin : > 0: also return ``label_margin``, the labels of the crop grown by
        ``margin`` pixels each side (the windows must cover it), with positions outside
        the tile clamped to its edge (Eq. 1's edge-replicate padding); the crop is then
        sampled on the interior of the grown crop's grid, so ``label`` is
        ``label_margin``'s interior wherever the crop lies inside the tile. The input
        of online weights (:mod:`npa_train.online`).

    Returns
    -------
    dict with ``image`` (N, C, h, w) float32 normalized, ``label`` (N, h, w) int64 and
    ``weight`` (N, h, w) float32 (1 at non-ignored pixels when the batch has no
    ``weight``; 0 at ignored pixels in any case), plus ``tile`` and ``index`` (and
    ``label_margin`` (N, h + 2·margin, w + 2·margin) int64 for ``margin > 0``).

    Shape
    -----
    - batch["image"]: ``(N, Hp, Wp, C)`` integer or float; ``batch["label"]``:
      ``(N, Hp, Wp)`` integer; ``batch["weight"]``: ``(N, Hp, Wp)`` float;
      ``batch["theta"]``: ``(N, 2, 3)`` float64, crop pixel -> window pixel.
    """
    dev = torch.device(device) if device is not None else batch["image"].device
    theta = batch["theta"].detach().cpu().numpy().astype(np.float64)
    valid_hw = [tuple(int(x) for x in hw) for hw in batch["valid_hw"].tolist()]
    raw = batch["image"].to(dev, non_blocking=True)
    lab = batch["label"].to(dev, non_blocking=True)
    if lab.dtype not in (torch.int32, torch.int64):
        lab = lab.to(torch.int32)
    wgt = batch.get("weight")
    wgt = wgt.to(dev, non_blocking=True).float() if wgt is not None else None
    n, _, _, c = raw.shape
    tidx = batch["tile_index"].to(dev)
    m = mean.to(dev, torch.float32)[tidx].view(n, c, 1, 1)
    s = std.to(dev, torch.float32)[tidx].view(n, c, 1, 1)
    lab, inside = _mask_outside(lab, valid_hw, ignore_index)
    margin = int(margin)
    lab_m = None
    if all(_integral_matrix(t) for t in theta):
        img, lab_o, w_o, inside_o = _integral_crop(
            raw.permute(0, 3, 1, 2), lab, wgt, theta, valid_hw, crop, ignore_index
        )
        img_o = torch.where(inside_o[:, None], (img.float() - m) / s, torch.zeros((), device=dev))
        lab_o = lab_o.long()
        if margin:
            lab_m = _integral_labels_clamped(lab, theta, valid_hw, crop, margin).long()
    else:
        if margin:
            grid, lab_m = _margin_grid(lab, theta, valid_hw, crop, margin)
        else:
            grid = _grid(theta, raw.shape[1], raw.shape[2], crop, dev)
        img_o, lab_o, w_o = _resample(raw, lab, wgt, inside, grid, (m, s), theta, valid_hw, crop,
                                      ignore_index)  # fmt: skip
    valid_o = lab_o != ignore_index
    w_o = valid_o.float() if wgt is None else torch.where(valid_o, w_o, torch.zeros((), device=dev))
    img_o = gaussian_blur(img_o, batch["blur_sigma"].tolist(), blur_kernel)
    out = {
        "image": img_o.contiguous(),
        "label": lab_o.contiguous(),
        "weight": w_o.contiguous(),
        "tile": list(batch["tile"]),
        "index": batch["index"].clone(),
    }
    if lab_m is not None:
        out["label_margin"] = lab_m.contiguous()
    return out


def _mask_outside(lab: Tensor, valid_hw: list, ignore_index: int) -> tuple[Tensor, Tensor | None]:
    """Labels with the padding beyond each window's tile part set to ignore, and the
    ``(N, Hp, Wp)`` bool mask of that part (None when no window is padded)."""
    n, hp, wp = lab.shape
    if all(hw == (hp, wp) for hw in valid_hw):
        return lab, None
    dev = lab.device
    rows = torch.arange(hp, device=dev).view(1, hp, 1)
    cols = torch.arange(wp, device=dev).view(1, 1, wp)
    hw = torch.as_tensor(valid_hw, device=dev)
    inside = (rows < hw[:, 0].view(n, 1, 1)) & (cols < hw[:, 1].view(n, 1, 1))
    ignore = torch.full((), ignore_index, dtype=lab.dtype, device=dev)
    return torch.where(inside, lab, ignore), inside


def _margin_grid(lab: Tensor, theta, valid_hw, crop, margin: int) -> tuple[Tensor, Tensor]:
    """The crop's sampling grid and the labels of the crop grown by ``margin``.

    One grid for both: the grown crop's, its interior for the crop itself. Positions are
    clamped into each window (= the tile where the window reaches its border), so
    nearest sampling repeats the tile's edge labels beyond it (Eq. 1's padding).
    """
    n, hp, wp = lab.shape
    dev = lab.device
    ch, cw = crop
    grown = (ch + 2 * margin, cw + 2 * margin)
    grid_m = _grid(_grown_theta(theta, margin), hp, wp, grown, dev)
    grid = grid_m[:, margin : margin + ch, margin : margin + cw].contiguous()
    hw = torch.as_tensor(valid_hw, dtype=torch.float64)
    lo = torch.tensor([1.0 / wp - 1.0, 1.0 / hp - 1.0], dtype=torch.float64)
    hi = torch.stack([(2 * (hw[:, 1] - 1) + 1) / wp - 1, (2 * (hw[:, 0] - 1) + 1) / hp - 1],
                     dim=1)  # fmt: skip
    clamped = torch.maximum(grid_m, lo.to(dev, torch.float32))
    clamped = torch.minimum(clamped, hi.to(dev, torch.float32).view(n, 1, 1, 2))
    lab_m = F.grid_sample(lab.float()[:, None], clamped, mode="nearest",
                          padding_mode="border", align_corners=False)  # fmt: skip
    return grid, lab_m[:, 0].long()


def _resample(raw, lab, wgt, inside, grid, norm, theta, valid_hw, crop, ignore_index):
    """Image (normalized), labels and weights resampled on ``grid``.

    One channels-last source for one bilinear ``grid_sample``: the bands, [inside],
    [weight · valid, valid], filled in place (no concatenation copy); one nearest
    ``grid_sample`` for the labels. Returns ``(image, label, weight or None)``.
    """
    n, hp, wp, c = raw.shape
    dev, (m, s) = raw.device, norm
    fill = not _footprint_inside(theta, valid_hw, crop)
    nch = c + int(fill) + (2 if wgt is not None else 0)
    src = torch.empty((n, hp, wp, nch), dtype=torch.float32, device=dev)
    src[..., :c] = raw
    if fill:
        src[..., c] = inside if inside is not None else 1.0
    if wgt is not None:
        valid = lab != ignore_index
        src[..., -2] = torch.where(valid, wgt, torch.zeros((), device=dev))
        src[..., -1] = valid
    src = src.permute(0, 3, 1, 2)  # NCHW view, channels-last memory
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    img_o = (out[:, :c] - m * out[:, c : c + 1]) / s if fill else (out[:, :c] - m) / s
    # labels + 1 so that the zero padding outside reads as "outside" (0), not as class 0
    lab_s = F.grid_sample((lab + 1).float()[:, None], grid, mode="nearest",
                          padding_mode="zeros", align_corners=False)  # fmt: skip
    lab_o = lab_s[:, 0].long() - 1
    lab_o = torch.where(lab_o < 0, torch.full((), ignore_index, device=dev), lab_o)
    w_o = out[:, -2] / out[:, -1].clamp_min(1e-6) if wgt is not None else None
    return img_o, lab_o, w_o

"""Generate the small synthetic ISPRS-Vaihingen-style demo dataset in ``data/demo``.

The real Vaihingen crops live elsewhere (they are not part of this repository), so the README's
main command needs something to run on out of the box. This script builds two synthetic
"suburban" tiles laid out on disk exactly like the ISPRS 2D semantic labelling benchmark:

    top/demo_area{1,2}.tif                                   3-band uint8 IRRG orthophoto
    gts_for_participants/demo_area{1,2}.tif                  colour-coded ground truth (RGB)
    gts_eroded_for_participants/demo_area{1,2}_noBoundary.tif  same, class boundaries in black

A label map is drawn first (roads, parking lots, paved yards, rectangular and L-shaped
buildings, tree crowns made of discs, cars, clutter patches on a low-vegetation background) and
the image is rendered from it in false colour (near-infrared, red, green; vegetation is bright in
the first band) with per-object colours, roof shading, cast shadows, low-frequency texture, a
slight blur and low-amplitude noise, so that the image is not a trivial per-pixel lookup of the
label. The eroded ground truth paints every pixel whose 7x7 window (Chebyshev distance 3)
contains another class black, like the ISPRS ``*_noBoundary`` files.

Only numpy and Pillow are used, and everything is driven by ``numpy.random.default_rng(seed)``,
so running the script twice gives byte-identical files. Usage::

    python data/make_demo.py [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# ISPRS class order and colour palette (RGB).
CLASSES = (
    "impervious_surfaces",
    "building",
    "low_vegetation",
    "tree",
    "car",
    "clutter",
)
PALETTE = np.array(
    [
        (255, 255, 255),  # impervious surfaces
        (0, 0, 255),  # building
        (0, 255, 255),  # low vegetation
        (0, 255, 0),  # tree
        (255, 255, 0),  # car
        (255, 0, 0),  # clutter / background
    ],
    dtype=np.uint8,
)
IMP, BUILDING, LOWVEG, TREE, CAR, CLUTTER = range(len(CLASSES))
BOUNDARY_RGB = (0, 0, 0)
ERODE_RADIUS = 3  # Chebyshev radius of the ignore band: a 7x7 window

DEFAULT_SEED = 20240611
DEFAULT_OUT = Path(__file__).resolve().parent / "demo"

# Base IRRG colours (NIR, R, G) per material.
ROAD_RGB = (118, 114, 120)
LOT_RGB = (132, 127, 131)
YARD_RGB = (160, 151, 152)
MARKING_RGB = (215, 212, 214)
GRASS_RGB = (196, 118, 128)
TREE_RGB = (150, 62, 78)
ROOF_RGBS = (
    (176, 138, 118),  # tiles, brownish
    (160, 96, 86),  # tiles, red-brown
    (108, 104, 112),  # slate grey
    (86, 82, 92),  # anthracite
    (196, 188, 184),  # light sheet / gravel
    (184, 164, 146),  # beige
)
CAR_RGBS = (
    (232, 230, 228),  # white
    (38, 38, 44),  # black
    (150, 150, 160),  # silver
    (168, 196, 74),  # red car (red is bright in the 2nd band)
    (58, 60, 96),  # blue
    (214, 204, 150),  # yellow
    (96, 150, 162),  # green
)
CLUTTER_RGBS = (
    (150, 96, 80),  # bare soil
    (92, 92, 84),  # dark debris
    (184, 160, 120),  # sand / gravel
    (120, 72, 62),  # wood / containers
)

# Tile specifications. Roads are (x0, y0, x1, y1, width) centre lines in pixels (9 cm GSD), which
# are jittered by the generator. Lots are (road index, position along road 0..1, side, length,
# depth). The target shares stop the building/tree placement loops.
TILES = {
    "demo_area1": {
        "shape": (1024, 1024),
        "roads": [
            (-60, 300, 1084, 300, 84),
            (-60, 770, 1084, 770, 62),
            (520, -60, 520, 1084, 92),
            (-60, 520, 560, 1140, 70),
        ],
        "lots": [(0, 0.72, -1, 300, 140), (2, 0.56, 1, 220, 128)],
        "road_trees": [(1, 1), (2, -1)],
        "building_share": 0.22,
        "tree_share": 0.17,
        "n_road_cars": 10,
        "n_clutter": 22,
    },
    "demo_area2": {
        "shape": (768, 1024),
        "roads": [
            (-60, 430, 1084, 430, 90),
            (250, -60, 250, 828, 68),
            (805, -60, 805, 828, 60),
            (560, -60, 1140, 330, 66),
        ],
        "lots": [(0, 0.42, 1, 240, 130)],
        "road_trees": [(0, -1), (1, 1)],
        "building_share": 0.21,
        "tree_share": 0.18,
        "n_road_cars": 9,
        "n_clutter": 18,
    },
}


class Region:
    """A shape rasterised into a crop of the tile: slices, boolean mask, local (u, v) coords."""

    def __init__(self, ys: slice, xs: slice, mask: np.ndarray, u=None, v=None):
        self.ys, self.xs, self.mask, self.u, self.v = ys, xs, mask, u, v


class Scene:
    """Label map plus a float colour image that are painted together, object by object."""

    def __init__(self, shape: tuple[int, int], rng: np.random.Generator):
        self.h, self.w = shape
        self.rng = rng
        self.label = np.full(shape, LOWVEG, dtype=np.uint8)
        self.colour = np.empty((*shape, 3), dtype=np.float32)
        self.colour[:] = GRASS_RGB

    # --- rasterisation -------------------------------------------------------------------
    def _crop(self, x0: float, y0: float, x1: float, y1: float):
        xa, xb = max(0, math.floor(x0)), min(self.w, math.ceil(x1) + 1)
        ya, yb = max(0, math.floor(y0)), min(self.h, math.ceil(y1) + 1)
        if xa >= xb or ya >= yb:
            return None
        yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float32)
        return slice(ya, yb), slice(xa, xb), xx + 0.5, yy + 0.5

    def rect(self, cx, cy, length, width, angle, pad=0.0) -> Region | None:
        """Rotated rectangle; u runs along ``length`` (direction ``angle``), v across it."""
        c, s = math.cos(angle), math.sin(angle)
        hl, hw = length / 2 + pad, width / 2 + pad
        ex, ey = abs(hl * c) + abs(hw * s), abs(hl * s) + abs(hw * c)
        crop = self._crop(cx - ex, cy - ey, cx + ex, cy + ey)
        if crop is None:
            return None
        ys, xs, xx, yy = crop
        dx, dy = xx - cx, yy - cy
        u, v = dx * c + dy * s, -dx * s + dy * c
        mask = (np.abs(u) <= hl) & (np.abs(v) <= hw)
        return Region(ys, xs, mask, u, v) if mask.any() else None

    def disc(self, cx, cy, r) -> Region | None:
        crop = self._crop(cx - r, cy - r, cx + r, cy + r)
        if crop is None:
            return None
        ys, xs, xx, yy = crop
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r
        mask = d <= 1.0
        return Region(ys, xs, mask, d, None) if mask.any() else None

    def polygon(self, points) -> Region | None:
        px, py = [p[0] for p in points], [p[1] for p in points]
        crop = self._crop(min(px), min(py), max(px), max(py))
        if crop is None:
            return None
        ys, xs, _, _ = crop
        img = Image.new("L", (xs.stop - xs.start, ys.stop - ys.start), 0)
        ImageDraw.Draw(img).polygon([(x - xs.start, y - ys.start) for x, y in points], fill=1)
        mask = np.asarray(img, dtype=bool)
        return Region(ys, xs, mask) if mask.any() else None

    # --- painting ------------------------------------------------------------------------
    def only(self, region: Region | None, classes, min_inside: float = 0.0, area: float = 1.0):
        """True if every tile pixel of ``region`` has a class in ``classes``.

        ``min_inside`` is the least fraction of the nominal ``area`` that must lie in the tile.
        """
        if region is None:
            return False
        if region.mask.sum() < min_inside * area:
            return False
        return bool(np.isin(self.label[region.ys, region.xs][region.mask], classes).all())

    def paint(self, region, cls, rgb, allowed=None, shade=None) -> None:
        if region is None:
            return
        lab = self.label[region.ys, region.xs]
        col = self.colour[region.ys, region.xs]
        m = region.mask.copy()
        if allowed is not None:
            m &= np.isin(lab, allowed)
        lab[m] = cls
        rgb = np.asarray(rgb, dtype=np.float32)
        if shade is not None:
            rgb = rgb * shade(region)[..., None]
            col[m] = rgb[m]
        else:
            col[m] = rgb

    def jitter(self, rgb, amount: float = 10.0):
        return tuple(float(c) + float(self.rng.uniform(-amount, amount)) for c in rgb)


# --- scene construction ---------------------------------------------------------------------
def _road_geometry(road):
    x0, y0, x1, y1, width = road
    length = math.hypot(x1 - x0, y1 - y0)
    angle = math.atan2(y1 - y0, x1 - x0)
    return (x0 + x1) / 2, (y0 + y1) / 2, length, width, angle


def add_roads(scene: Scene, spec) -> list[tuple]:
    rng = scene.rng
    roads = []
    for x0, y0, x1, y1, width in spec["roads"]:
        d = float(rng.uniform(-25, 25))
        if abs(x1 - x0) >= abs(y1 - y0):
            y0, y1 = y0 + d, y1 + d
        else:
            x0, x1 = x0 + d, x1 + d
        roads.append((x0, y0, x1, y1, width + float(rng.uniform(-8, 8))))
    coverage = np.zeros(scene.label.shape, dtype=np.uint8)
    for road in roads:
        cx, cy, length, width, angle = _road_geometry(road)
        reg = scene.rect(cx, cy, length, width, angle)
        scene.paint(reg, IMP, scene.jitter(ROAD_RGB, 6))
        coverage[reg.ys, reg.xs] += reg.mask
    # Dashed centre lines on the wider roads, left out at crossings.
    for road in roads:
        cx, cy, length, width, angle = _road_geometry(road)
        if width < 70:
            continue
        reg = scene.rect(cx, cy, length, 3.0, angle)
        reg.mask &= (np.mod(reg.u, 64.0) < 32.0) & (coverage[reg.ys, reg.xs] == 1)
        scene.paint(reg, IMP, MARKING_RGB, allowed=[IMP])
    return roads


def _along(road, t: float, offset: float):
    """Point at fraction ``t`` along a road, ``offset`` pixels to its left (-) or right (+)."""
    x0, y0, x1, y1, _ = road
    angle = math.atan2(y1 - y0, x1 - x0)
    x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
    return x - offset * math.sin(angle), y + offset * math.cos(angle), angle


def add_lots(scene: Scene, spec, roads) -> list[tuple]:
    """Paved parking lots along roads; returns their geometry for parking cars later."""
    lots = []
    for idx, t, side, length, depth in spec["lots"]:
        road = roads[idx]
        cx, cy, angle = _along(road, t, side * (road[4] / 2 + depth / 2 - 2))
        reg = scene.rect(cx, cy, length, depth, angle)

        # Light stall lines across the lot, every 27 px, away from the driving aisle.
        def stalls(r, depth=depth):
            line = (np.mod(r.u + 1000.0, 27.0) < 2.0) & (np.abs(r.v) > depth / 2 - 48)
            return np.where(line, 1.45, 1.0).astype(np.float32)

        scene.paint(reg, IMP, scene.jitter(LOT_RGB, 5), allowed=[LOWVEG, IMP], shade=stalls)
        lots.append((cx, cy, length, depth, angle))
    return lots


def _gable(length_axis: str):
    """Roof shading: the two roof halves either side of the ridge get different brightness."""

    def shade(r: Region):
        across = r.v if length_axis == "u" else r.u
        return np.where(across >= 0, 0.84, 1.06).astype(np.float32)

    return shade


def add_buildings(scene: Scene, spec, roads) -> None:
    rng = scene.rng
    road_angles = sorted({round(_road_geometry(r)[4] % (math.pi / 2), 3) for r in roads})
    target = spec["building_share"] * scene.label.size
    built = 0
    for _ in range(4000):
        if built >= target:
            break
        length = float(rng.uniform(90, 210))
        width = float(rng.uniform(62, min(125, length)))
        if rng.random() < 0.7:
            angle = float(rng.choice(road_angles)) + float(rng.choice([0.0, math.pi / 2]))
        else:
            angle = float(rng.uniform(0, math.pi))
        cx, cy = float(rng.uniform(0, scene.w)), float(rng.uniform(0, scene.h))
        parts = [(cx, cy, length, width, "u")]
        if rng.random() < 0.35:  # L-shaped: a wing perpendicular to one end of the main body
            c, s = math.cos(angle), math.sin(angle)
            wing_w = float(rng.uniform(50, width))
            ext = float(rng.uniform(40, 90))
            su, sv = float(rng.choice([-1.0, 1.0])), float(rng.choice([-1.0, 1.0]))
            wu = su * (length / 2 - wing_w / 2)
            wv = sv * (width / 2 + ext) / 2
            wx, wy = cx + wu * c - wv * s, cy + wu * s + wv * c
            parts.append((wx, wy, wing_w, width / 2 + ext, "v"))
        yard = float(rng.uniform(8, 18)) if rng.random() < 0.45 else 0.0
        area = sum(p[2] * p[3] for p in parts)
        checks = [scene.rect(x, y, ln, wd, angle, pad=10 + yard) for x, y, ln, wd, _ in parts]
        inside = sum(r.mask.sum() for r in checks if r is not None)
        if any(r is None for r in checks) or inside < 0.6 * area:
            continue
        if not all(scene.only(r, [LOWVEG]) for r in checks):
            continue
        if yard:
            yard_rgb = scene.jitter(YARD_RGB, 8)
            for x, y, ln, wd, _ in parts:
                scene.paint(scene.rect(x, y, ln, wd, angle, pad=yard), IMP, yard_rgb)
        roof = scene.jitter(ROOF_RGBS[int(rng.integers(len(ROOF_RGBS)))], 10)
        for x, y, ln, wd, axis in parts:
            reg = scene.rect(x, y, ln, wd, angle)
            scene.paint(reg, BUILDING, roof, shade=_gable(axis))
            built += int(reg.mask.sum())


def _crown(rgb_scale: float):
    def shade(r: Region):
        return (rgb_scale * (1.08 - 0.38 * r.u**2)).astype(np.float32)

    return shade


def add_trees(scene: Scene, spec, roads) -> None:
    rng = scene.rng
    # Rows of street trees along the road edge, overhanging it a little.
    for idx, side in spec["road_trees"]:
        road = roads[idx]
        length = math.hypot(road[2] - road[0], road[3] - road[1])
        t = float(rng.uniform(0, 60)) / length
        while t < 1:
            r = float(rng.uniform(18, 28))
            x, y, _ = _along(road, t, side * (road[4] / 2 + 0.4 * r))
            if 0 <= x < scene.w and 0 <= y < scene.h and scene.label[int(y), int(x)] == LOWVEG:
                rgb = scene.jitter(TREE_RGB, 12)
                scene.paint(
                    scene.disc(x, y, r),
                    TREE,
                    rgb,
                    allowed=[LOWVEG, TREE, IMP],
                    shade=_crown(float(rng.uniform(0.9, 1.1))),
                )
            t += float(rng.uniform(55, 75)) / length
    # Clusters of overlapping crowns in the gardens.
    target = spec["tree_share"] * scene.label.size
    for _ in range(400):
        if (scene.label == TREE).sum() >= target:
            break
        cx, cy = float(rng.uniform(0, scene.w)), float(rng.uniform(0, scene.h))
        if scene.label[int(cy), int(cx)] != LOWVEG:
            continue
        for _ in range(int(rng.integers(2, 10))):
            x, y = cx + float(rng.normal(0, 28)), cy + float(rng.normal(0, 28))
            rgb = scene.jitter(TREE_RGB, 12)
            scene.paint(
                scene.disc(x, y, float(rng.uniform(13, 34))),
                TREE,
                rgb,
                allowed=[LOWVEG, TREE],
                shade=_crown(float(rng.uniform(0.88, 1.12))),
            )


def _car_shade(length: float):
    """Darker wind screen and rear window on a car seen from above (front towards +u)."""

    def shade(r: Region):
        t = r.u / (length / 2)
        glass = ((t > 0.22) & (t < 0.45)) | ((t < -0.55) & (t > -0.72))
        return np.where(glass, 0.45, 1.0).astype(np.float32)

    return shade


def _place_car(scene: Scene, cx, cy, angle) -> bool:
    rng = scene.rng
    length, width = float(rng.uniform(40, 46)), float(rng.uniform(18, 21))
    angle += float(rng.normal(0, 0.03))
    if not scene.only(scene.rect(cx, cy, length, width, angle, pad=3), [IMP], 1.0, 0.0):
        return False
    reg = scene.rect(cx, cy, length, width, angle)
    if reg is None or reg.mask.sum() < 0.8 * length * width:
        return False
    rgb = scene.jitter(CAR_RGBS[int(rng.integers(len(CAR_RGBS)))], 8)
    scene.paint(reg, CAR, rgb, shade=_car_shade(length))
    return True


def add_cars(scene: Scene, spec, roads, lots) -> None:
    rng = scene.rng
    # Parked cars: perpendicular to the lot's long side, in the stall rows.
    for cx, cy, length, depth, angle in lots:
        c, s = math.cos(angle), math.sin(angle)
        for row in (-1.0, 1.0):
            v = row * (depth / 2 - 26)
            u = -length / 2 + 13.5 + 27.0
            while u < length / 2 - 27:
                if rng.random() < 0.45:
                    x, y = cx + u * c - v * s, cy + u * s + v * c
                    _place_car(scene, x, y, angle + math.pi / 2 + (math.pi if row > 0 else 0))
                u += 27.0
    # Cars driving or parked along the roads, in either lane.
    placed = 0
    for _ in range(600):
        if placed >= spec["n_road_cars"]:
            break
        road = roads[int(rng.integers(len(roads)))]
        lane = float(rng.choice([-1.0, 1.0]))
        offset = lane * float(rng.uniform(0.15, 0.3)) * road[4]
        x, y, angle = _along(road, float(rng.uniform(0, 1)), offset)
        placed += _place_car(scene, x, y, angle + (math.pi if lane < 0 else 0.0))


def add_clutter(scene: Scene, spec) -> None:
    rng = scene.rng
    placed = 0
    for _ in range(600):
        if placed >= spec["n_clutter"]:
            break
        cx, cy = float(rng.uniform(0, scene.w)), float(rng.uniform(0, scene.h))
        if scene.label[int(cy), int(cx)] not in (LOWVEG, IMP):
            continue
        n = int(rng.integers(5, 9))
        radius = float(rng.uniform(9, 26))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = radius * rng.uniform(0.55, 1.0, n)
        pts = [
            (cx + float(r) * math.cos(a), cy + float(r) * math.sin(a))
            for a, r in zip(angles, radii, strict=True)
        ]
        reg = scene.polygon(pts)
        if not scene.only(reg, [LOWVEG, IMP]):
            continue
        rgb = scene.jitter(CLUTTER_RGBS[int(rng.integers(len(CLUTTER_RGBS)))], 12)
        scene.paint(reg, CLUTTER, rgb)
        placed += 1


# --- rendering ------------------------------------------------------------------------------
def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[dy:, dx:] = mask[: h - dy, : w - dx]
    return out


def _smooth_noise(shape, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: a coarse Gaussian grid upsampled bilinearly."""
    h, w = shape
    coarse = rng.normal(0, 1, (h // cell + 2, w // cell + 2)).astype(np.float32)
    big = Image.fromarray(coarse, mode="F").resize(
        ((w // cell + 2) * cell, (h // cell + 2) * cell), Image.Resampling.BILINEAR
    )
    return np.asarray(big, dtype=np.float32)[:h, :w]


def render(scene: Scene) -> np.ndarray:
    rng = scene.rng
    label = scene.label
    col = scene.colour.copy()
    # Cast shadows (sun in the north-west): buildings throw longer shadows than trees.
    building, tree = label == BUILDING, label == TREE
    shadow = np.zeros_like(building)
    for k in range(1, 7):
        shadow |= _shift(building, 2 * k, (3 * k) // 2)
    for k in range(1, 4):
        shadow |= _shift(tree, 2 * k, k) & ~tree
    shadow &= ~building
    col[shadow] *= 0.62
    # Texture: lawn patches, leafy crowns, a little wear on roofs and pavement.
    amp_low = np.array([0.05, 0.04, 0.11, 0.06, 0.02, 0.08], dtype=np.float32)[label]
    amp_mid = np.array([0.02, 0.02, 0.04, 0.12, 0.02, 0.06], dtype=np.float32)[label]
    col *= (1.0 + amp_low * _smooth_noise(label.shape, 48, rng))[..., None]
    col *= (1.0 + amp_mid * _smooth_noise(label.shape, 5, rng))[..., None]
    img = Image.fromarray(np.clip(np.rint(col), 0, 255).astype(np.uint8), mode="RGB")
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(radius=0.8)), dtype=np.int16)
    # Sparse +1 noise on ~10% of samples: visible grain, yet the TIFFs stay small (the budget
    # for everything in data/demo is 2.5 MB; dense per-pixel noise would roughly double it).
    noise = (rng.random(arr.shape) < 0.1).astype(np.int16)
    return np.clip(arr + noise, 0, 255).astype(np.uint8)


def erode_boundaries(label: np.ndarray, radius: int = ERODE_RADIUS) -> np.ndarray:
    """True where the (2r+1)^2 window around a pixel holds more than one class."""
    size = 2 * radius + 1
    padded = np.pad(label, radius, mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(padded, size, axis=1)
    lo, hi = win.min(axis=-1), win.max(axis=-1)
    lo = np.lib.stride_tricks.sliding_window_view(lo, size, axis=0).min(axis=-1)
    hi = np.lib.stride_tricks.sliding_window_view(hi, size, axis=0).max(axis=-1)
    return lo != hi


def make_tile(spec, rng: np.random.Generator):
    scene = Scene(spec["shape"], rng)
    roads = add_roads(scene, spec)
    lots = add_lots(scene, spec, roads)
    add_buildings(scene, spec, roads)
    add_trees(scene, spec, roads)
    add_cars(scene, spec, roads, lots)
    add_clutter(scene, spec)
    return scene.label, render(scene)


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="RGB").save(
        path,
        compression="tiff_adobe_deflate",
        tiffinfo={317: 2},  # 317: horizontal predictor
    )
    with Image.open(path) as im:
        back = np.asarray(im.convert("RGB"))
        assert im.mode == "RGB" and np.array_equal(back, arr), f"{path} does not read back"


def _check_colours(rgb: np.ndarray, allow_black: bool) -> None:
    allowed = {tuple(int(c) for c in p) for p in PALETTE}
    if allow_black:
        allowed.add(BOUNDARY_RGB)
    found = {tuple(int(c) for c in p) for p in np.unique(rgb.reshape(-1, 3), axis=0)}
    assert found <= allowed, f"unexpected label colours: {sorted(found - allowed)}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    for name, spec in TILES.items():
        label, image = make_tile(spec, rng)
        assert label.shape == spec["shape"] and image.shape == (*spec["shape"], 3)
        counts = np.bincount(label.ravel(), minlength=len(CLASSES))
        assert (counts > 0).all(), f"{name}: a class is missing"
        gt = PALETTE[label]
        eroded = gt.copy()
        eroded[erode_boundaries(label)] = BOUNDARY_RGB
        _check_colours(gt, allow_black=False)
        _check_colours(eroded, allow_black=True)
        _save(image, args.out / "top" / f"{name}.tif")
        _save(gt, args.out / "gts_for_participants" / f"{name}.tif")
        _save(eroded, args.out / "gts_eroded_for_participants" / f"{name}_noBoundary.tif")
        shares = ", ".join(
            f"{c} {n / label.size:.1%}" for c, n in zip(CLASSES, counts, strict=True)
        )
        print(f"{name} {label.shape[0]}x{label.shape[1]}: {shares}")


if __name__ == "__main__":
    main()

"""Dataset presets: class names, palettes, ignore values and label decoding.

Class index order of the ``isprs`` preset (the mmsegmentation order; kept in the
store's attrs so no reader has to guess):

=====  ===================  ===============
index  class                RGB
=====  ===================  ===============
0      impervious surfaces  255, 255, 255
1      building             0, 0, 255
2      low vegetation       0, 255, 255
3      tree                 0, 255, 0
4      car                  255, 255, 0
5      clutter/background   255, 0, 0
255    ignore               0, 0, 0 (boundary band of the eroded ``noBoundary`` ground truth)
=====  ===================  ===============

``loveda``: raw masks hold 0 = no-data, 1 background, 2 building, 3 road, 4 water,
5 barren, 6 forest, 7 agriculture; decoding maps 0 -> 255 (ignore) and v -> v - 1.

``index``: labels already hold class indices ``0 .. num_classes - 1`` and an ignore
value chosen by the user (default 255).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from npa_precompute.errors import ParameterError

__all__ = ["PRESETS", "LabelError", "Preset", "get_preset"]


class LabelError(ValueError):
    """A label file does not hold what its preset expects."""


@dataclass(frozen=True)
class Preset:
    """How to decode one dataset's label files into class indices.

    Attributes
    ----------
    name : str
    classes : tuple of str
        Class names in index order.
    ignore_index : int
        Label value of ignored pixels after decoding.
    palette : tuple of (r, g, b) or None
        Colour of each class for RGB colour-coded ground truth (``isprs``), else None.
    ignore_colors : tuple of (r, g, b)
        Colours decoded to ``ignore_index`` (``isprs``: black).
    remap : dict or None
        Raw value -> decoded value, applied once when a raw file is read (``loveda``).
    foreground : tuple of int
        Classes that enter mean scores (the ISPRS tables leave clutter out).
    """

    name: str
    classes: tuple[str, ...]
    ignore_index: int = 255
    palette: tuple[tuple[int, int, int], ...] | None = None
    ignore_colors: tuple[tuple[int, int, int], ...] = ()
    remap: dict[int, int] | None = None
    foreground: tuple[int, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def label_dtype(self) -> np.dtype:
        """dtype of decoded labels: uint8, or uint16 when the ignore value or a class index
        exceeds 255."""
        top = max(self.ignore_index, self.num_classes - 1)
        return np.dtype(np.uint8 if top <= 255 else np.uint16)

    def to_attrs(self) -> dict:
        """JSON-ready description stored in the weight store's root attrs."""
        return {
            "preset": self.name,
            "classes": list(self.classes),
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "palette": [list(c) for c in self.palette] if self.palette else None,
            "ignore_colors": [list(c) for c in self.ignore_colors],
            "label_remap": {str(k): v for k, v in self.remap.items()} if self.remap else None,
            "foreground_classes": list(self.foreground or range(self.num_classes)),
        }

    def decode(
        self,
        raw: np.ndarray,
        *,
        source: str = "label",
        unknown_colors: str = "error",
        volume: bool = False,
    ) -> np.ndarray:
        """Decode a raw label array into class indices with ``ignore_index``.

        Parameters
        ----------
        raw : (H, W) integer or (H, W, 3|4) uint8 array
            As read from the file: colour-coded RGB(A) for ``isprs``, indices otherwise.
        source : str
            File name used in error messages.
        unknown_colors : {"error", "ignore"}
            What to do with colours outside the palette (``isprs`` only): raise, or
            decode them to ``ignore_index``.
        volume : bool
            ``raw`` is a (D, H, W) label volume (index presets only).

        Returns
        -------
        (H, W) uint8 array (uint16 when ``ignore_index`` or the class count exceeds 255),
        (D, H, W) for a volume.

        Raises
        ------
        LabelError
            Wrong band count, colours outside the palette (names each colour and its
            pixel count), values outside the classes, or a value equal to the ignore
            index that is also a class.
        """
        if unknown_colors not in ("error", "ignore"):
            raise ParameterError(
                "unknown_colors", f"must be 'error' or 'ignore', got {unknown_colors!r}"
            )
        out_dtype = self.label_dtype
        if self.palette is not None and volume:
            raise LabelError(
                f"{source}: preset {self.name!r} decodes RGB colour-coded label maps; label "
                "volumes hold class indices: use --preset index"
            )
        if self.palette is not None:
            return self._decode_rgb(raw, source, unknown_colors).astype(out_dtype, copy=False)
        if raw.ndim != (3 if volume else 2):
            raise LabelError(
                f"{source}: preset {self.name!r} expects a single-band index label, "
                f"got an array of shape {raw.shape}"
                + (" (an RGB colour-coded label? try --preset isprs)" if raw.ndim == 3 else "")
            )
        if not np.issubdtype(raw.dtype, np.integer):
            raise LabelError(f"{source}: labels must hold integers, got dtype {raw.dtype}")
        if self.remap is not None:
            return self._decode_remap(raw, source).astype(out_dtype, copy=False)
        return self._decode_index(raw, source).astype(out_dtype, copy=False)

    # -- colour-coded ground truth ---------------------------------------------------------
    def _decode_rgb(self, raw: np.ndarray, source: str, unknown_colors: str) -> np.ndarray:
        if raw.ndim != 3 or raw.shape[2] not in (3, 4):
            raise LabelError(
                f"{source}: preset {self.name!r} expects RGB colour-coded labels (H, W, 3), got "
                f"shape {raw.shape}"
                + (" (an index label? try --preset index)" if raw.ndim == 2 else "")
            )
        if raw.dtype != np.uint8:
            raise LabelError(f"{source}: RGB labels must be uint8, got {raw.dtype}")
        colors = list(self.palette) + list(self.ignore_colors)
        values = list(range(len(self.palette))) + [self.ignore_index] * len(self.ignore_colors)
        codes = np.array([(r << 16) | (g << 8) | b for r, g, b in colors], dtype=np.int64)
        unknown = 1 << 20  # not a class index nor an ignore value
        out = np.empty(raw.shape[:2], dtype=np.int32)
        from npa_precompute._kernels import decode_colors  # numba: loaded when decoding

        decode_colors(raw, codes, np.array(values, dtype=np.int64), unknown, out)
        known = out != unknown
        if not known.all():
            if unknown_colors == "ignore":
                out[~known] = self.ignore_index
            else:
                rgb = raw[..., :3][~known].astype(np.int64)
                code = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
                bad, counts = np.unique(code, return_counts=True)
                top = np.argsort(-counts)[:8]
                listed = ", ".join(
                    f"({b >> 16}, {(b >> 8) & 255}, {b & 255}): {c} px"
                    for b, c in zip(bad[top], counts[top], strict=True)
                )
                more = f" and {len(bad) - len(top)} more" if len(bad) > len(top) else ""
                raise LabelError(
                    f"{source}: {int((~known).sum())} pixels have {len(bad)} "
                    f"colour{'s' if len(bad) != 1 else ''} outside "
                    f"the {self.name} palette: {listed}{more}. Lossy compression or "
                    "anti-aliasing? Pass --unknown-colors ignore to map them to ignore."
                )
        return out

    # -- index labels --------------------------------------------------------------------------
    def _decode_remap(self, raw: np.ndarray, source: str) -> np.ndarray:
        top = max(self.remap)
        if raw.size and (int(raw.min()) < 0 or int(raw.max()) > top):
            bad = np.unique(raw[(raw < 0) | (raw > top)])[:8].tolist()
            hint = (
                " These look already remapped (255 = ignore): read them with --preset index."
                if self.ignore_index in bad
                else ""
            )
            raise LabelError(
                f"{source}: raw {self.name} masks hold values 0..{top}, found {bad}.{hint}"
            )
        lut = np.full(top + 1, self.ignore_index, dtype=np.int64)
        for k, v in self.remap.items():
            lut[k] = v
        return lut[raw]

    def _decode_index(self, raw: np.ndarray, source: str) -> np.ndarray:
        if self.ignore_index < self.num_classes:
            raise LabelError(
                f"ignore value {self.ignore_index} collides with class index {self.ignore_index} "
                f"of {self.num_classes} classes; choose an ignore value >= {self.num_classes}"
            )
        valid = (raw >= 0) & (raw < self.num_classes) | (raw == self.ignore_index)
        if not valid.all():
            bad, counts = np.unique(raw[~valid], return_counts=True)
            listed = ", ".join(f"{b}: {c} px" for b, c in zip(bad[:8], counts[:8], strict=True))
            raise LabelError(
                f"{source}: values outside classes 0..{self.num_classes - 1} and ignore "
                f"{self.ignore_index}: {listed}"
            )
        return raw


ISPRS = Preset(
    name="isprs",
    classes=(
        "impervious surfaces",
        "building",
        "low vegetation",
        "tree",
        "car",
        "clutter/background",
    ),
    ignore_index=255,
    palette=((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)),
    ignore_colors=((0, 0, 0),),
    foreground=(0, 1, 2, 3, 4),
)

LOVEDA = Preset(
    name="loveda",
    classes=("background", "building", "road", "water", "barren", "forest", "agriculture"),
    ignore_index=255,
    palette=None,
    remap={0: 255, 1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6},
)

#: LoveDA's colour map for figures (index order after decoding).
LOVEDA_COLORS = (
    (255, 255, 255),
    (255, 0, 0),
    (255, 255, 0),
    (0, 0, 255),
    (159, 129, 183),
    (0, 255, 0),
    (255, 195, 128),
)

PRESETS = ("isprs", "loveda", "index")


def get_preset(
    name: str, *, num_classes: int | None = None, ignore_index: int | None = None
) -> Preset:
    """Return the preset ``name`` (``isprs``, ``loveda`` or ``index``).

    ``index`` needs ``num_classes``; ``ignore_index`` (default 255) overrides the
    preset's ignore value for ``index`` only.

    Raises
    ------
    ValueError
        Unknown name, ``index`` without ``num_classes``, ``num_classes < 1``, an ignore
        value outside 0..65535, or options given to a preset that fixes them.
    """
    if name == "index":
        if num_classes is None:
            raise ParameterError(
                "num_classes",
                "must be given with preset 'index'",
                message="preset 'index' needs `num_classes` (--num-classes)",
            )
        if num_classes < 1:
            raise ParameterError("num_classes", f"must be >= 1, got {num_classes}")
        ignore = 255 if ignore_index is None else int(ignore_index)
        if not 0 <= ignore <= 65535:
            raise ParameterError("ignore_index", f"must be in 0..65535, got {ignore}")
        if ignore < num_classes:
            raise ParameterError(
                "ignore_index",
                f"{ignore} collides with class index {ignore} of "
                f"{num_classes} classes; choose a value >= {num_classes}",
            )
        return Preset(
            name="index",
            classes=tuple(f"class_{i}" for i in range(num_classes)),
            ignore_index=ignore,
        )
    presets = {"isprs": ISPRS, "loveda": LOVEDA}
    if name not in presets:
        raise ParameterError("preset", f"must be one of {PRESETS}, got {name!r}")
    preset = presets[name]
    if num_classes is not None and num_classes != preset.num_classes:
        raise ParameterError(
            "num_classes",
            f"{num_classes}: applies to preset 'index' only; preset {name!r} has "
            f"{preset.num_classes} classes",
            message=f"preset {name!r} has {preset.num_classes} classes; `num_classes` "
            f"{num_classes} applies to --preset index only",
        )
    if ignore_index is not None and ignore_index != preset.ignore_index:
        raise ParameterError(
            "ignore_index",
            f"{ignore_index}: applies to preset 'index' only; preset {name!r} uses ignore value "
            f"{preset.ignore_index}",
            message=f"preset {name!r} uses ignore value {preset.ignore_index}; "
            "`ignore_index` applies to --preset index only",
        )
    return preset

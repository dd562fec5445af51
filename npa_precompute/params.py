"""Checks and parsers of argument values shared by both packages.

Every helper takes the argument's Python name, returns the value in its canonical
form, and raises :class:`~npa_precompute.errors.ParameterError` naming the argument
(:class:`~npa_precompute.errors.ParameterTypeError`, also a :class:`TypeError`, for a
value of the wrong type), so the command lines report the option that sets it.

Booleans are never integers or numbers here (``True`` is refused where a count is
expected). Imports only numpy, so the command lines can use it at start-up.

Tile lists have one policy everywhere (:func:`parse_tiles`): ids are stripped, empty
items dropped, an empty list means "all tiles" (None) and a repeated id is an error
naming it (a repeated tile would be trained on or scored twice).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from npa_precompute.errors import ParameterError, ParameterTypeError

__all__ = [
    "MAX_K",
    "check_amp",
    "check_choice",
    "check_int",
    "check_number",
    "parse_ks",
    "parse_size",
    "parse_tiles",
    "parse_weights_option",
    "parse_window",
    "split_list",
]


#: Largest supported search region k of Eq. 1: keeps (2k + 1)**2 inside int64 arithmetic.
MAX_K = 2**30


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _bounds(minimum, maximum, *, strict: bool = False) -> str:
    if minimum is not None and maximum is not None:
        return f" in {'(' if strict else '['}{minimum}, {maximum}]"
    if minimum is not None:
        return f" {'>' if strict else '>='} {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer within ``[minimum, maximum]``.

    Parameters
    ----------
    name : str
        The argument's name, for the error message.
    value : int or numpy integer
        Booleans are refused.
    minimum, maximum : int or None, keyword-only, default None
        Inclusive bounds; None: unbounded.

    Returns
    -------
    int

    Raises
    ------
    ParameterTypeError
        Not an integer: ``"`batch` must be an integer >= 1, got 1.5"``.
    ParameterError
        Outside the bounds: ``"`batch` must be an integer >= 1, got 0"``.
    """
    reason = f"must be an integer{_bounds(minimum, maximum)}, got {value!r}"
    if not _is_int(value):
        raise ParameterTypeError(name, reason)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ParameterError(name, reason)
    return int(value)


def check_number(
    name: str,
    value,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
) -> float:
    """``value`` as a finite ``float`` within the bounds.

    Parameters
    ----------
    name : str
        The argument's name, for the error message.
    value : int, float or numpy number
        Booleans, NaN and infinities are refused.
    minimum, maximum : float or None, keyword-only, default None
        Bounds (``maximum`` inclusive); None: unbounded.
    strict : bool, keyword-only, default False
        Exclude ``minimum`` itself (``lr > 0``).

    Returns
    -------
    float

    Raises
    ------
    ParameterTypeError
        Not a number: ``"`lr` must be a finite number > 0.0, got 'x'"``.
    ParameterError
        Not finite, or outside the bounds.
    """
    reason = f"must be a finite number{_bounds(minimum, maximum, strict=strict)}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ParameterTypeError(name, reason)
    number = float(value)
    low_ok = minimum is None or (number > minimum if strict else number >= minimum)
    if not (math.isfinite(number) and low_ok and (maximum is None or number <= maximum)):
        raise ParameterError(name, reason)
    return number


def check_choice(name: str, value, choices: Iterable):
    """``value`` if it is one of ``choices``.

    Raises
    ------
    ParameterError
        ``"`fmt` must be one of ('png', 'tif'), got 'bmp'"``.
    """
    choices = tuple(choices)
    if value not in choices:
        raise ParameterError(name, f"must be one of {choices}, got {value!r}")
    return value


def check_amp(amp: bool | None, device) -> None:
    """Refuse mixed precision (``amp``) on a device that is not CUDA.

    Parameters
    ----------
    amp : bool or None
        Falsy values pass.
    device : torch.device or str
        ``"cuda"``, ``"cuda:1"``, ``torch.device("cpu")``.

    Raises
    ------
    ParameterError
        ``"`amp` needs a CUDA device, got device 'cpu'"``.
    """
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    if amp and kind != "cuda":
        raise ParameterError("amp", f"needs a CUDA device, got device {str(device)!r}")


def parse_size(value, *, name: str) -> tuple[int, int]:
    """A side or a pair of sides in pixels: ``513`` -> ``(513, 513)``; ``(h, w)`` -> ``(h, w)``.

    Used for crops and sliding windows (``crop``, ``window``).

    Parameters
    ----------
    value : int or sequence of 2 ints
    name : str, keyword-only
        The argument's name, for the error message.

    Returns
    -------
    (h, w) tuple of int

    Raises
    ------
    ParameterTypeError
        Not one or two integers (a string included).
    ParameterError
        A side below 1.
    """
    pair = (value, value) if _is_int(value) else value
    if (
        not isinstance(pair, Sequence)
        or isinstance(pair, str)
        or len(pair) != 2
        or not all(_is_int(v) for v in pair)
    ):
        raise ParameterTypeError(name, f"must be an int or a pair (h, w) of ints, got {value!r}")
    h, w = int(pair[0]), int(pair[1])
    if h < 1 or w < 1:
        raise ParameterError(name, f"must be >= 1, got {value!r}")
    return h, w


def parse_window(value: str | Sequence[int] | None) -> tuple[int, int, int, int] | None:
    """A crop window ``"x0,y0,w,h"`` (pixels; x = column, y = row) as a tuple.

    Parameters
    ----------
    value : str, sequence of 4 ints, or None
        None (or an empty string) means the whole tile.

    Returns
    -------
    (x0, y0, w, h) tuple of int, or None

    Raises
    ------
    ParameterError
        Not four integers, ``x0`` or ``y0`` < 0, or ``w`` or ``h`` < 1 (argument
        ``window``).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        values = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ParameterError("window", f"must be x0,y0,w,h (four integers), got {value!r}")
    x0, y0, w, h = values
    if x0 < 0 or y0 < 0:
        raise ParameterError("window", f"origin x0, y0 must be >= 0, got {x0}, {y0}")
    if w < 1 or h < 1:
        raise ParameterError("window", f"width and height must be >= 1, got {w}, {h}")
    return values


def split_list(value: str | Iterable[str] | None) -> list[str]:
    """Items of a comma-separated string, or of several (a repeatable option's values).

    ``"a, b"`` -> ``["a", "b"]``; ``("a,b", "c")`` -> ``["a", "b", "c"]``; None -> ``[]``.
    Items are stripped and empty ones dropped; order and repeats are kept.
    """
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    return [p.strip() for item in items for p in str(item).split(",") if p.strip()]


def parse_tiles(value: str | Iterable[str] | None, *, name: str = "tiles") -> list[str] | None:
    """A tile list: ``"a,b"``, ``["a", "b"]`` or ``("a,b", "c")`` -> ids in the given order.

    Parameters
    ----------
    value : str, iterable of str, or None
        Comma-separated ids, or several such strings.
    name : str, keyword-only, default "tiles"
        The argument's name, for the error message (``"val_tiles"``).

    Returns
    -------
    list of str, or None
        None when no id is given (None, ``""``, ``[]``): all tiles.

    Raises
    ------
    ParameterError
        An id given more than once: ``"`tiles` lists a more than once"``.
    """
    tiles = split_list(value)
    if not tiles:
        return None
    dup = sorted({t for t in tiles if tiles.count(t) > 1})
    if dup:
        raise ParameterError(name, f"lists {', '.join(dup)} more than once")
    return tiles


def parse_weights_option(value: str | None) -> str | None:
    """A weights option value: None, ``""`` or ``"none"`` (any case) -> None, else the name.

    The name itself (``k32_log10_L0.5``, ``online:k32_log10_L0.5``) is parsed where it is
    used (:class:`npa_precompute.names.WeightsSpec`).

    Raises
    ------
    ParameterTypeError
        Not a string or None (argument ``weights``).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParameterTypeError("weights", f"must be a weights name or None, got {value!r}")
    value = value.strip()
    return None if value.lower() in ("", "none") else value


def parse_ks(ks: int | str | Iterable) -> tuple[int | tuple[int, ...], ...]:
    """Parse search regions from an int, an iterable or a string like ``"8,16,32"``.

    A region is an int k (isotropic) or one k per spatial axis: ``"2x14x14"`` in a
    string, a tuple of ints in an iterable (``"2x14x14,8"``, ``[(2, 14, 14), 8]``). A
    tuple is returned as given (its length is checked where the number of axes is
    known: :func:`npa_precompute.regions.parse_regions`).

    Returns the values in the given order without duplicates.

    Raises
    ------
    ParameterTypeError
        A value is not an integer (booleans and floats are refused); argument ``k``.
    ParameterError
        The list is empty, or a value is < 0 or > :data:`MAX_K` (argument ``k``).
    """
    if isinstance(ks, str):
        parts = [p.strip() for p in ks.split(",") if p.strip()]
        try:
            values = [_k_token(p) for p in parts]
        except ValueError:
            raise ParameterError(
                "k", f"must be comma-separated integers or KDxKHxKW tuples, got {ks!r}"
            ) from None
    elif _is_int(ks):
        values = [int(ks)]
    else:
        values = []
        for v in ks:
            if isinstance(v, (tuple, list, np.ndarray)) and len(v) > 1:
                for a in v:
                    if not _is_int(a):
                        raise ParameterTypeError("k", f"must hold integers, got {a!r} in {v!r}")
                values.append(tuple(int(a) for a in v))
                continue
            if not _is_int(v):
                raise ParameterTypeError("k", f"must hold integers, got {v!r} ({type(v).__name__})")
            values.append(int(v))
    if not values:
        raise ParameterError("k", "must hold at least one search region")
    out: list[int | tuple[int, ...]] = []
    for v in values:
        for a in v if isinstance(v, tuple) else (v,):
            if a < 0:
                raise ParameterError("k", f"must be >= 0, got {a}")
            if a > MAX_K:
                raise ParameterError("k", f"must be <= {MAX_K}, got {a}")
        if v not in out:
            out.append(v)
    return tuple(out)


def _k_token(text: str) -> int | tuple[int, ...]:
    """One region as written: ``"32"`` -> 32, ``"2x14x14"`` -> (2, 14, 14) (ValueError if
    not). The inverse of :func:`npa_precompute.regions.format_region`."""
    axes = [int(a) for a in text.lower().split("x")]
    return axes[0] if len(axes) == 1 else tuple(axes)

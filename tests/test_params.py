"""npa_precompute.params: one check or parser per kind of argument, errors naming it."""

from __future__ import annotations

import numpy as np
import pytest

from npa_precompute.errors import ParameterError, ParameterTypeError
from npa_precompute.params import (
    check_amp,
    check_choice,
    check_int,
    check_number,
    parse_size,
    parse_tiles,
    parse_weights_option,
    parse_window,
    split_list,
)


def test_check_int_accepts_integers_in_bounds():
    assert check_int("n", 3, minimum=1) == 3 and type(check_int("n", np.int64(3))) is int
    assert check_int("n", -5) == -5 and check_int("n", 5, minimum=0, maximum=5) == 5


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ParameterError, r"^`batch` must be an integer >= 1, got 0$"),
        (True, ParameterTypeError, r"^`batch` must be an integer >= 1, got True$"),
        (1.5, ParameterTypeError, r"^`batch` must be an integer >= 1, got 1.5$"),
        ("2", ParameterTypeError, r"^`batch` must be an integer >= 1, got '2'$"),
    ],
)
def test_check_int_names_the_argument(value, error, message):
    with pytest.raises(error, match=message) as exc:
        check_int("batch", value, minimum=1)
    assert exc.value.param == "batch"


def test_check_int_type_error_is_a_type_error_and_a_parameter_error():
    with pytest.raises(TypeError):
        check_int("n", 1.0)
    with pytest.raises(ParameterError, match=r"in \[0, 3\], got 4"):
        check_int("n", 4, minimum=0, maximum=3)


def test_check_number():
    assert check_number("lr", 1, minimum=0.0, strict=True) == 1.0
    assert check_number("p", np.float32(0.5), minimum=0, maximum=1) == 0.5
    with pytest.raises(ParameterError, match=r"^`lr` must be a finite number > 0.0, got 0$"):
        check_number("lr", 0, minimum=0.0, strict=True)
    with pytest.raises(ParameterError, match=r"^`g` must be a finite number >= 0.0, got -1$"):
        check_number("g", -1, minimum=0.0)
    with pytest.raises(ParameterError, match="finite"):
        check_number("g", float("nan"))
    with pytest.raises(ParameterTypeError, match="got True"):
        check_number("g", True)
    with pytest.raises(ParameterError, match=r"in \[0, 1\], got 2"):
        check_number("p", 2, minimum=0, maximum=1)


def test_check_choice_and_amp():
    assert check_choice("fmt", "png", ("png", "tif")) == "png"
    with pytest.raises(ParameterError, match=r"^`fmt` must be one of \('png', 'tif'\), got 'bmp'$"):
        check_choice("fmt", "bmp", ("png", "tif"))
    check_amp(False, "cpu")
    check_amp(True, "cuda:1")
    with pytest.raises(ParameterError, match=r"^`amp` needs a CUDA device, got device 'cpu'$"):
        check_amp(True, "cpu")


def test_parse_size():
    assert parse_size(513, name="crop") == (513, 513)
    assert parse_size((8, np.int64(12)), name="crop") == (8, 12)
    with pytest.raises(ParameterError, match=r"^`window` must be >= 1, got \(-3, 4\)$"):
        parse_size((-3, 4), name="window")
    for bad in ("513", (1, 2, 3), (1.0, 2), True):
        with pytest.raises(ParameterTypeError, match="`crop` must be an int or a pair"):
            parse_size(bad, name="crop")


def test_parse_window():
    assert parse_window(None) is None and parse_window(" ") is None
    assert parse_window("1, 2,3,4") == (1, 2, 3, 4) and parse_window((0, 0, 1, 1)) == (0, 0, 1, 1)
    for text, message in [("1,2,3", "four integers"), ("a,b,c,d", "four integers"),
                          ("-1,0,4,4", "must be >= 0"), ("0,0,0,4", "must be >= 1")]:  # fmt: skip
        with pytest.raises(ParameterError, match=message):
            parse_window(text)


def test_tile_lists_one_policy():
    assert split_list(None) == [] and split_list(("a, b", "c,,")) == ["a", "b", "c"]
    assert parse_tiles("a, b") == ["a", "b"] and parse_tiles(("b", "a,c")) == ["b", "a", "c"]
    assert parse_tiles(None) is None and parse_tiles("") is None and parse_tiles([]) is None
    with pytest.raises(ParameterError, match=r"^`val_tiles` lists a, b more than once$"):
        parse_tiles("a,b,a,c,b", name="val_tiles")


def test_parse_weights_option():
    assert parse_weights_option(None) is None and parse_weights_option(" None ") is None
    assert parse_weights_option("") is None
    assert parse_weights_option(" k32_log10_L0.5") == "k32_log10_L0.5"
    with pytest.raises(ParameterTypeError, match="`weights`"):
        parse_weights_option(32)

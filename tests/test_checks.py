"""The one range-check helper: end points open or closed as asked, no booleans or NaN as numbers, one line."""

import math

import pytest

from gdr import checks
from gdr.errors import ConfigError


@pytest.mark.parametrize("value", [0.0, 0, -1e-12, math.nan, math.inf, True, "1"])
def test_an_open_lower_bound_refuses_its_end_point_and_non_numbers(value):
    with pytest.raises(ConfigError, match=r"^x must be a finite number > 0, got "):
        checks.positive("x", value)


def test_end_points_are_kept_or_refused_as_declared():
    assert checks.number("x", 0.0, low=0) == 0.0 and checks.number("x", 1.0, low=0, high=1) == 1.0
    assert checks.number("x", 1e-12, low=0, low_open=True) == 1e-12
    for value, kwargs in ((1.0, {"high": 1, "high_open": True}), (-0.1, {"low": 0}), (0.5, {"low": 0.5,
                                                                                         "low_open": True})):
        with pytest.raises(ConfigError):
            checks.number("x", value, **kwargs)
    with pytest.raises(ConfigError, match=r"^x must be a finite number in \(0\.5, 1\), got 1$"):
        checks.number("x", 1, low=0.5, high=1, low_open=True, high_open=True)


def test_integers_and_choices():
    assert checks.integer("n", 1, low=1, high=1000) == 1 and checks.integer("n", 1000, low=1, high=1000) == 1000
    for bad in (0, 1001, 2.0, True):
        with pytest.raises(ConfigError, match=r"^n must be an integer in \[1, 1000\], got "):
            checks.integer("n", bad, low=1, high=1000)
    assert checks.choice("s", "ddim", ("ddim", "ddpm")) == "ddim"
    with pytest.raises(ConfigError, match=r"^s must be 'ddim' or 'ddpm', got 'dpm'$"):
        checks.choice("s", "dpm", ("ddim", "ddpm"))
    with pytest.raises(ConfigError, match=r"^s must be one of 'a', 'b', 'c', got 'd'$"):
        checks.choice("s", "d", "abc")

"""Registries: a bad name or parameter is one config line; a constructor's own errors go through as they are."""

import pytest

from gdr.errors import ConfigError
from gdr.registry import Registry


def _registry():
    things = Registry("thing")

    @things.register("ok")
    class Ok:
        def __init__(self, size: int = 1, *, name: str = "x"):
            self.size, self.name = size, name

    @things.register("buggy")
    class Buggy:
        def __init__(self, size: int = 1):
            self.size = len(size)  # a bug: TypeError from inside the constructor

    return things


def test_unknown_names_and_parameters_are_one_config_line():
    things = _registry()
    with pytest.raises(ConfigError, match=r"unknown thing 'nope'; known: buggy, ok"):
        things.build("nope")
    with pytest.raises(ConfigError) as info:
        things.build("ok", sise=3)
    assert "thing 'ok'" in str(info.value) and "sise" in str(info.value) and "it takes: size, name" in str(info.value)
    assert "\n" not in str(info.value)
    assert things.build("ok", size=3, name="y").size == 3


def test_a_bug_inside_a_constructor_is_not_disguised_as_a_config_error():
    with pytest.raises(TypeError) as info:
        _registry().build("buggy", size=3)
    assert not isinstance(info.value, ConfigError)
    assert "len()" in str(info.value)


def test_real_registries_report_bad_parameters_in_one_line():
    from gdr.degradations import build_degradation
    from gdr.methods import build_guidance

    with pytest.raises(ConfigError, match=r"guidance method 'dps': .*'scale'.*it takes: loss, every"):
        build_guidance("dps", {"scale": 2})
    with pytest.raises(ConfigError, match=r"degradation 'lowpass'.*cutof_hz"):
        build_degradation({"name": "lowpass", "cutof_hz": 4000})

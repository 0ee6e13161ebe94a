"""Strength schedules: each one's documented value at every step, the table's interpolation, and bad values."""

import math

import pytest
import torch

from gdr.errors import ConfigError
from gdr.schedules import Constant, Cosine, Linear, Table, build_schedule, schedule_for


def test_ramps_run_from_start_at_the_noisiest_step_to_end_at_the_last():
    assert Constant(0.7).values(3) == [0.7, 0.7, 0.7]
    assert Linear(0.2, 1.0).values(5) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0], abs=1e-12)
    cosine = Cosine(0.0, 2.0).values(5)
    assert cosine == pytest.approx([1 - math.cos(math.pi * i / 4) for i in range(5)], abs=1e-12)
    assert cosine[0] == 0 and cosine[2] == pytest.approx(1.0) and cosine[-1] == pytest.approx(2.0)
    steps = [b - a for a, b in zip(cosine, cosine[1:])]
    assert steps[0] < steps[1] and steps[-1] < steps[-2]  # half-cosine: slow at both ends
    assert Linear(0.3, 0.9).values(1) == [0.3] and Cosine(1.0, 0.0).values(2) == pytest.approx([1.0, 0.0])


def test_a_table_gives_its_values_at_their_count_and_interpolates_linearly_at_others():
    table = Table([1.0, 3.0, 2.0])
    assert table.values(3) == pytest.approx([1.0, 3.0, 2.0])
    assert table.values(5) == pytest.approx([1.0, 2.0, 3.0, 2.5, 2.0])
    assert table.values(2) == pytest.approx([1.0, 2.0]) and table.values(1) == [1.0]
    assert Table([4.0]).values(3) == [4.0, 4.0, 4.0]


def test_a_guidance_config_picks_its_schedule():
    config = {"name": "dps", "scale": 2.0, "schedule": "linear", "start_scale": None, "schedule_path": None}
    assert schedule_for(config).values(3) == pytest.approx([0.0, 1.0, 2.0])
    assert schedule_for({**config, "schedule": "cosine", "start_scale": 1.0}).values(3) == pytest.approx([1.0, 1.5, 2.0])
    assert schedule_for({**config, "schedule": "constant"}).values(2) == [2.0, 2.0]
    assert build_schedule(0.5).values(2) == [0.5, 0.5]
    assert build_schedule({"name": "linear", "start": 1, "end": 0}).values(3) == pytest.approx([1.0, 0.5, 0.0])


@pytest.mark.parametrize("build", [lambda: Constant(-1.0), lambda: Linear(0.0, float("nan")), lambda: Table([]),
                                   lambda: Table([1.0, -0.5]), lambda: build_schedule({"name": "cosine", "end": -2})])
def test_bad_strengths_are_config_errors(build):
    with pytest.raises(ConfigError):
        build()


def test_unknown_schedule_names_list_the_known_ones():
    with pytest.raises(ConfigError, match="unknown schedule .exponential.; known: .*cosine"):
        build_schedule("exponential")


def test_knots_interpolate_over_the_noise_level_whatever_the_step_count():
    from gdr.schedules import Knots, interpolate_knots

    knots = Knots([1.0, 3.0, 2.0])  # at t/T = 0, 0.5, 1
    assert knots.values(3, levels=[1.0, 0.5, 0.0]) == pytest.approx([2.0, 3.0, 1.0])
    assert knots.values(2, levels=[0.75, 0.25]) == pytest.approx([2.5, 2.0])  # the same curve at another count
    assert float(interpolate_knots(torch.tensor([4.0]), 0.3)) == 4.0
    values = torch.tensor([1.0, 3.0], requires_grad=True)
    interpolate_knots(values, 0.25).backward()  # the gradient reaches the two neighbouring knots, by their weights
    assert values.grad.tolist() == pytest.approx([0.75, 0.25])
    with pytest.raises(ConfigError, match="noise level"):
        knots(0, 3)


def test_a_learned_schedule_file_says_what_it_was_learned_for(tmp_path):
    from gdr.schedules import Knots, load_schedule, save_schedule, schedule_warnings

    lowpass = {"name": "lowpass", "cutoff_hz": 3000}
    path = save_schedule(tmp_path / "s.safetensors", torch.tensor([1.0, 2.0, 3.0]), method="dps", steps=3,
                         provenance={"degradation": lowpass, "eta": 0.0, "train_files": "abc"})
    schedule = load_schedule(path, method="dps")
    assert isinstance(schedule, Table) and schedule.values(3) == pytest.approx([1.0, 2.0, 3.0])
    meta = schedule.provenance
    assert meta["degradation"] == lowpass and meta["parametrisation"] == "steps" and meta["train_files"] == "abc"
    with pytest.raises(ConfigError, match="learned for 'dps', not 'mpgd'"):
        load_schedule(path, method="mpgd")
    same_task = {"name": "lowpass", "params": {"cutoff_hz": 3000}, "seed": 0}  # evaluate's spelling
    assert schedule_warnings(schedule, str(path), same_task, 3) == []
    other = schedule_warnings(schedule, str(path), {"name": "noise", "params": {"snr_db": 10}}, 5)
    assert len(other) == 2 and "learned for lowpass(cutoff_hz=3000), used on noise(snr_db=10)" in other[0]
    assert "for 3 steps, used at 5" in other[1]
    knots = load_schedule(save_schedule(tmp_path / "k.safetensors", torch.tensor([1.0, 2.0]), method="dps", steps=3,
                                        parametrisation="knots", provenance={"degradation": lowpass}))
    assert isinstance(knots, Knots) and schedule_warnings(knots, "k", same_task, 50) == []  # step-count free

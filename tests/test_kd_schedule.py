"""KD weight schedule: values at known steps, the hard zero from kd_iters on, bad input."""

from __future__ import annotations

import math

import pytest

from megatron_salt.distill import KD_SCHEDULES, kd_weight


def test_constant_is_the_two_stage_switch():
    assert [kd_weight(s, alpha=0.5, kd_iters=3) for s in range(5)] == [0.5, 0.5, 0.5, 0.0, 0.0]


def test_linear_values():
    got = [kd_weight(s, alpha=0.8, kd_iters=4, schedule="linear") for s in range(6)]
    assert got == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0, 0.0], abs=1e-12)


def test_cosine_values():
    got = [kd_weight(s, alpha=1.0, kd_iters=4, schedule="cosine") for s in range(5)]
    half = math.sqrt(0.5)
    assert got == pytest.approx([1.0, 0.5 + 0.5 * half, 0.5, 0.5 - 0.5 * half, 0.0], abs=1e-12)


@pytest.mark.parametrize("schedule", KD_SCHEDULES)
def test_zero_from_kd_iters_on_and_monotone(schedule):
    weights = [kd_weight(s, alpha=0.7, kd_iters=50, schedule=schedule) for s in range(120)]
    assert weights[0] == pytest.approx(0.7)
    assert all(w == 0.0 for w in weights[50:])
    assert all(a >= b for a, b in zip(weights, weights[1:], strict=False))
    assert kd_weight(0, alpha=0.7, kd_iters=0, schedule=schedule) == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(alpha=1.5, kd_iters=10), "alpha"),
        (dict(alpha=-0.1, kd_iters=10), "alpha"),
        (dict(alpha=float("nan"), kd_iters=10), "alpha"),
        (dict(alpha=0.5, kd_iters=-1), "kd_iters"),
        (dict(alpha=0.5, kd_iters=10, schedule="step"), "unknown KD schedule 'step'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kd_weight(0, **kwargs)

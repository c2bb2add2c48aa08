"""The Pareto front of the methods comparison: a point is on it exactly when no other point costs
no more and scores no worse, while being strictly better on one of the two."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sweeper.report.pareto import dominates, on_front

# few distinct values, so that equal costs and equal scores (the edge cases) come up often
VALUES = st.integers(0, 6).map(float)
POINTS = st.lists(st.tuples(VALUES, VALUES), max_size=12)


@given(POINTS, st.booleans())
def test_no_point_on_the_front_is_dominated_and_every_point_off_it_is(points, maximize):
    flags = on_front(points, maximize)
    for point, flag in zip(points, flags, strict=True):
        dominated = any(dominates(other, point, maximize) for other in points)
        assert flag is not dominated, (point, flag)


def test_the_front_keeps_the_cheap_and_the_good_and_drops_what_a_cheaper_point_beats():
    # (trainable parameters, test accuracy): feature extraction, lora, unfreeze, layer_decay
    points = [(1_000, 0.80), (50_000, 0.86), (2_000_000, 0.87), (5_000_000, 0.85)]
    assert on_front(points, maximize=True) == [True, True, True, False]
    # a loss: lower is better
    assert on_front([(1, 0.5), (2, 0.6), (3, 0.4)], maximize=False) == [True, False, True]
    # equal points both stay; a point of the same cost with a better score wins
    assert on_front([(1, 0.5), (1, 0.5), (1, 0.4)], maximize=True) == [True, True, False]

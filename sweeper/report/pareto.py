"""The Pareto front of (cost, score) points: those no other point beats on one and matches or
beats on the other. Plain Python; the methods comparison marks its points with it."""

from __future__ import annotations

import math
from collections.abc import Sequence


def dominates(a: tuple[float, float], b: tuple[float, float], maximize: bool) -> bool:
    """``a`` costs no more and scores no worse than ``b``, and is strictly better on one of them."""
    (cost_a, score_a), (cost_b, score_b) = a, b
    if not maximize:
        score_a, score_b = -score_a, -score_b
    return cost_a <= cost_b and score_a >= score_b and (cost_a < cost_b or score_a > score_b)


def on_front(points: Sequence[tuple[float, float]], maximize: bool) -> list[bool]:
    """For each (cost, score) point, whether no other point dominates it (`dominates`).

    One sweep by increasing cost: a point is dominated by a cheaper point that scores no worse,
    or by one of the same cost that scores better. Equal points are both on the front.
    """
    value = [score if maximize else -score for _, score in points]
    order = sorted(range(len(points)), key=lambda i: points[i][0])
    flags = [False] * len(points)
    best_cheaper, i = -math.inf, 0
    while i < len(order):  # one group of equal cost at a time
        group = [j for j in order[i:] if points[j][0] == points[order[i]][0]]
        top = max(value[j] for j in group)
        for j in group:
            flags[j] = value[j] == top and value[j] > best_cheaper
        best_cheaper = max(best_cheaper, top)
        i += len(group)
    return flags

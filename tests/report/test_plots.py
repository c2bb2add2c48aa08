"""The plots, drawn from the study alone: PNG files for what the study can fill, a note where it
cannot, stage boundaries from what each trial recorded, and the Pareto front."""

from __future__ import annotations

from sweeper.report.plots import make_plots, pareto_front
from tests.report.studies import make_study


def test_plots_of_a_tiny_study_say_importances_need_more_trials():
    plots = {
        plot.name: plot
        for plot in make_plots(make_study("maximize", [(0, 0.8, 2.0), (2, 0.9, 5.0)]), "accuracy")
    }
    assert {"curves.png", "by_unfrozen_blocks.png", "by_lr_ratio.png", "by_compute.png"} <= set(plots)
    assert "need more completed trials: 2 completed" in plots["importances.png"].caption
    assert all(plot.png.startswith(b"\x89PNG") for plot in plots.values())


def test_the_pareto_front_keeps_only_trials_nothing_cheaper_beats():
    points = [(1.0, 0.80), (2.0, 0.70), (3.0, 0.85), (3.0, 0.90), (4.0, 0.88)]
    assert pareto_front(points, maximize=True) == [(1.0, 0.80), (3.0, 0.90)]
    # for a loss, lower is better
    assert pareto_front([(1.0, 0.5), (2.0, 0.6), (3.0, 0.4)], maximize=False) == [(1.0, 0.5), (3.0, 0.4)]

"""The progress lines: one per epoch with the trial, stage, epoch, metric and the time left."""

from __future__ import annotations

from rich.console import Console

from sweeper.progress import Progress


def test_each_epoch_shows_where_the_study_is_and_a_trial_end_counts_it():
    console = Console(record=True, width=200)
    progress = Progress(total_trials=4, already_finished=1, metric="accuracy", console=console)
    progress.trial_started(1, "fine_tuning", {"unfrozen_blocks": 2, "head_lr": 0.00312})
    progress.epoch(1, stage=1, stages=3, epoch=2, epochs=5, value=0.8123, seconds=1.0)
    progress.trial_ended(1, "COMPLETE", 0.8123)
    progress.trial_ended(2, "FAIL", None, "NonFiniteLossError: training loss is nan")
    text = console.export_text()
    assert "trial 1 (fine_tuning) unfrozen_blocks=2, head_lr=0.00312" in text
    assert "trial 1 [2/4] stage 1/2 epoch 3/5 val_accuracy 0.8123" in text and "left" in text
    assert "trial 1 complete val_accuracy 0.8123" in text
    assert "trial 2 fail (NonFiniteLossError: training loss is nan)" in text
    assert progress.finished == 2  # complete and pruned trials count; failed ones do not

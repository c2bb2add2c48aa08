"""Each arm's budget: feature extraction has its own trials only where the space holds both arms."""

from __future__ import annotations

from sweeper.budget import ArmBudget
from sweeper.spec import load_spec
from tests.conftest import write_spec


def _budget_of(tmp_path, blocks, fe_trials, trials=5, flag=None):
    spec = load_spec(
        write_spec(
            tmp_path, search={"unfrozen_blocks": blocks}, budget={"trials": trials, "fe_trials": fe_trials}
        )
    )
    return ArmBudget.of(spec, flag)


def test_each_arm_has_its_budget_only_where_the_space_holds_both(tmp_path):
    assert (_budget_of(tmp_path, [0, 2], 24).fe_trials, _budget_of(tmp_path, [0, 2], 24).total) == (24, 29)
    assert _budget_of(tmp_path, [0, 2], 24, flag=7).total == 31  # --trials sets the fine-tuning arm's
    assert not _budget_of(tmp_path, [0, 2], 0).separate  # fe_trials = 0: one shared budget
    assert _budget_of(tmp_path, [1, 2], 24).total == 5  # no feature extraction in the space
    assert _budget_of(tmp_path, 0, 24).total == 5  # feature extraction only

"""A trial: one `fit` run reported to Optuna after every epoch (pruned when hopeless, but not
before its first block unfreezes) and mirrored by an MLflow run that ends with the trial's state.
Faults never stop a worker: a NaN loss, CUDA running out of memory in a training step and data
that cannot be read each fail that one trial, with the reason on the trial and its MLflow run,
and the worker's loop goes on to the next trial. Real model, real study DB, real MLflow store."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState
from torch import nn

from sweeper.backbones import Pretrained
from sweeper.data import EncodedData
from sweeper.runtime import StudyRuntime
from sweeper.storage import StudyLock, make_storage
from sweeper.study import run_trials
from sweeper.tracking import StudyTracker
from sweeper.trial import make_objective
from tests.conftest import runtime_for, write_spec


def _objective(tracking_uri, spec_path):
    runtime = runtime_for(spec_path)
    tracker = StudyTracker(tracking_uri, runtime.spec.study.name)
    return make_objective(runtime, tracker), tracker


def test_a_pruned_trial_is_recorded_pruned_with_its_run_killed_and_feature_extraction_is_never_pruned(
    workdir, tracking_uri
):
    objective, tracker = _objective(tracking_uri, write_spec(workdir, search={"head_epochs": 1}))
    # accuracy never reaches 1.5: a real Optuna pruner stops the trial at its first fine-tuning epoch
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.5))
    study.enqueue_trial({"unfrozen_blocks": 1, "lr_ratio": 0.05, "stage_epochs": 1, "blocks_per_stage": 1})
    study.enqueue_trial({"unfrozen_blocks": 0})
    study.optimize(objective, n_trials=2)
    trial, frozen = study.trials
    assert trial.state == TrialState.PRUNED
    assert "pruned after epoch 1" in trial.user_attrs["prune_reason"]
    assert trial.intermediate_values.keys() == {0, 1}
    # feature extraction costs seconds on cached features: it runs to its end, its head tuned
    assert frozen.state == TrialState.COMPLETE
    tracker.flush()  # runs are written in the background
    run = MlflowClient(tracking_uri).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "PRUNED"


def test_a_fine_tuning_trial_is_not_pruned_before_its_first_block_unfreezes(workdir, tracking_uri):
    objective, tracker = _objective(tracking_uri, write_spec(workdir, search={"head_epochs": 2}))
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.5))
    study.enqueue_trial({"unfrozen_blocks": 2, "lr_ratio": 0.05, "stage_epochs": 1, "blocks_per_stage": 1})
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    # epochs 0 and 1 are the head-only stage; the first chance to prune is stage 1's first epoch
    assert "pruned after epoch 2" in trial.user_attrs["prune_reason"]


def test_a_failing_trial_ends_failed_with_its_reason_and_the_study_goes_on(workdir, tracking_uri):
    objective, tracker = _objective(tracking_uri, write_spec(workdir))
    study = optuna.create_study(direction="maximize")
    # an absurd learning rate makes the loss infinite: the trial fails, the next one runs
    study.enqueue_trial({"unfrozen_blocks": 0, "head_lr": 1e30})
    study.enqueue_trial({"unfrozen_blocks": 0, "head_lr": 0.005})
    with pytest.warns(UserWarning):
        study.optimize(objective, n_trials=2, catch=(Exception,))
    failed, ok = study.trials
    assert failed.state == TrialState.FAIL and ok.state == TrialState.COMPLETE
    assert "NonFiniteLossError" in failed.user_attrs["fail_reason"]
    tracker.flush()
    client = MlflowClient(tracking_uri)
    run = client.get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "NonFiniteLossError" in run.data.tags["sweeper.reason"]
    assert client.get_run(ok.user_attrs["mlflow_run_id"]).info.status == "FINISHED"


def test_a_fine_tuning_trial_records_its_stage_starts_and_seconds(workdir, tracking_uri):
    objective, tracker = _objective(tracking_uri, write_spec(workdir, search={"head_epochs": 2}))
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"unfrozen_blocks": 2, "lr_ratio": 0.05, "stage_epochs": 1, "blocks_per_stage": 1})
    study.enqueue_trial({"unfrozen_blocks": 0})
    study.optimize(objective, n_trials=2)
    tuned, frozen = study.trials
    assert tuned.user_attrs["stage_starts"] == [0, 2, 3]  # head 2 epochs, then a block per epoch
    assert "stage_starts" not in frozen.user_attrs  # one stage: nothing to record
    for trial in (tuned, frozen):
        seconds = trial.user_attrs["seconds"]
        assert 0 < seconds["device"] and 0 < seconds["bookkeeping"]
        assert seconds["device"] + seconds["bookkeeping"] <= seconds["wall"]


def test_a_trial_s_value_is_its_best_epoch_and_its_stages_are_recorded(workdir, tracking_uri):
    spec = write_spec(workdir, search={"head_epochs": 2, "stage_epochs": [1, 2]})
    objective, tracker = _objective(tracking_uri, spec)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"unfrozen_blocks": 2, "lr_ratio": 0.1, "stage_epochs": 2, "blocks_per_stage": 1})
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    values = trial.intermediate_values  # reported to Optuna: the best so far after each epoch
    tracker.flush()
    history = MlflowClient(tracking_uri).get_metric_history(trial.user_attrs["mlflow_run_id"], "val_accuracy")
    per_epoch = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert trial.value == pytest.approx(max(per_epoch))  # the best epoch, not the last
    assert trial.user_attrs["best_epoch"] == per_epoch.index(max(per_epoch))
    assert list(values.values()) == pytest.approx([max(per_epoch[: i + 1]) for i in range(len(per_epoch))])
    stages = trial.user_attrs["stages"]
    assert [s["stage"] for s in stages] == [0, 1, 2] and {s["outcome"] for s in stages} <= {
        "kept",
        "rolled_back",
    }
    tags = MlflowClient(tracking_uri).get_run(trial.user_attrs["mlflow_run_id"]).data.tags
    assert tags["sweeper.stages"] == ",".join(f"{s['stage']}:{s['outcome']}" for s in stages)


def test_a_trial_records_its_method_trainable_parameters_and_the_bytes_it_would_ship(workdir, tracking_uri):
    objective, tracker = _objective(tracking_uri, write_spec(workdir, search={"head_epochs": 1}))
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"unfrozen_blocks": 1, "lr_ratio": 0.1, "stage_epochs": 1, "blocks_per_stage": 1})
    study.enqueue_trial({"unfrozen_blocks": 0})
    study.optimize(objective, n_trials=2)
    tracker.flush()
    client = MlflowClient(tracking_uri)
    sizes = {}
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"]).data
        # the UI filters runs by either: params.method = "unfreeze", tags."sweeper.method" = "unfreeze"
        assert run.params["method"] == run.tags["sweeper.method"] == "unfreeze"
        assert run.metrics["trainable_params"] == trial.user_attrs["trainable_params"]
        assert run.metrics["ship_bytes"] == trial.user_attrs["ship_bytes"]
        sizes[trial.params["unfrozen_blocks"]] = (
            trial.user_attrs["trainable_params"],
            trial.user_attrs["ship_bytes"],
        )
    (head_params, head_bytes), (tuned_params, tuned_bytes) = sizes[0], sizes[1]
    assert head_params == 384 * 3 + 3  # MiniLM's 384 features to the 3 classes, and the biases
    assert tuned_params - head_params == 1_774_464  # one MiniLM layer (its 12 tensors)
    assert tuned_bytes > 4 * tuned_params  # float32, and a header
    assert 4 * head_params < head_bytes < 4 * head_params + 4096


class _OutOfMemoryHead(nn.Module):
    """A head whose first training step raises the error CUDA raises when the GPU is full."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.out_features = linear.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.linear(features)


class _FirstModelRunsOutOfMemory(Pretrained):
    def build(self, num_classes: int, trainable_from: int = 0):
        model = super().build(num_classes, trainable_from)
        if not getattr(self, "_built_one", False):
            self._built_one = True
            model.head = _OutOfMemoryHead(model.head)
        return model


class _FirstReadFails(EncodedData):
    """The dataset as loaded, except that the first example read raises, as a file that is
    truncated or gone from a network share would."""

    def __init__(self, data: EncodedData) -> None:
        self.__dict__.update(data.__dict__)
        self._failed_once = False

    def __getitem__(self, i: int):
        if not self._failed_once:
            self._failed_once = True
            raise OSError("image file is truncated (5 bytes not processed)")
        return super().__getitem__(i)


def _runtime(workdir, tiny_bert) -> StudyRuntime:
    return runtime_for(write_spec(workdir, model={"name": str(tiny_bert)}))


def _nan_loss(runtime: StudyRuntime, study: optuna.Study) -> str:
    # an absurd learning rate makes the loss infinite after the first step
    study.enqueue_trial({"unfrozen_blocks": 0, "head_lr": 1e30})
    return "NonFiniteLossError: training loss is"


def _out_of_memory(runtime: StudyRuntime, study: optuna.Study) -> str:
    pretrained = runtime.pretrained
    runtime.pretrained = _FirstModelRunsOutOfMemory(
        **{f.name: getattr(pretrained, f.name) for f in dataclasses.fields(pretrained)}
    )
    return "OutOfMemoryError: CUDA out of memory"


def _unreadable_data(runtime: StudyRuntime, study: optuna.Study) -> str:
    runtime.data = _FirstReadFails(runtime.data)
    return "OSError: image file is truncated"


@pytest.mark.filterwarnings("ignore:Fixed parameter head_lr")  # the NaN case's absurd learning rate
@pytest.mark.parametrize("fault", [_nan_loss, _out_of_memory, _unreadable_data], ids=lambda f: f.__name__[1:])
def test_a_faulty_trial_fails_with_its_reason_and_the_worker_runs_the_next(
    fault, workdir, tracking_uri, tiny_bert
):
    runtime = _runtime(workdir, tiny_bert)
    storage = make_storage(f"sqlite:///{workdir / 'sweeper.db'}")
    study = optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    reason = fault(runtime, study)

    objective = make_objective(runtime, StudyTracker(tracking_uri, "tiny"))
    ran = run_trials(study, objective, 1, StudyLock(storage, "tiny"))

    failed, after = study.trials
    assert ran == 2 and after.state == TrialState.COMPLETE
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"].startswith(reason)
    run = MlflowClient(tracking_uri).get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["sweeper.reason"].startswith(reason)
    if fault is _out_of_memory:  # and says how to make the next trials fit
        assert "lower [train] batch_size" in failed.user_attrs["fail_reason"]

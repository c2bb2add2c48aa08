"""The writer process that makes a trial's MLflow writes: what was sent is written even when the
worker is killed the next moment, a writer that died is replaced without losing its runs, and a
process forked from the worker does not keep the writer alive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from mlflow import MlflowClient

from sweeper import mlflow_writer
from sweeper.mlflow_writer import DirectWriter, ProcessWriter, perform
from sweeper.tracking import StudyTracker


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_write_to_a_run_named_before_it_existed_finds_it(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("direct")
    runs: dict[str, str] = {}
    run_id = perform(client, runs, "create", "pending-1", (experiment, "trial-000", {}))
    perform(client, runs, "end", "pending-1", ([("value", 0.5, 0, 0)], [("head_lr", "0.01")], [], "FINISHED"))
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED" and finished.data.params == {"head_lr": "0.01"}
    with pytest.raises(LookupError, match="was not created"):
        perform(client, runs, "log", "pending-2", ([], [], []))
    assert DirectWriter(client).send("ping", "").result() is None


@pytest.mark.slow
def _wait_for_status(client: MlflowClient, run_id: str, status: str, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while (found := client.get_run(run_id).info.status) != status and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def test_writes_already_sent_are_made_after_the_worker_is_killed(tracking_uri):
    # the run ends in the writer process, which outlives its killed parent
    script = textwrap.dedent(
        f"""
        import os, signal
        from sweeper.tracking import StudyTracker
        tracker = StudyTracker({tracking_uri!r}, "killed")
        run = tracker.start_trial(0, {{"head_lr": 0.01}}, {{}})
        print(run.created(), flush=True)
        for epoch in range(3):
            run.log_epoch(epoch, {{"val_accuracy": 0.5}})
        run.end("COMPLETE", metrics={{"value": 0.5}})
        os.kill(os.getpid(), signal.SIGKILL)  # no flush, no exit handlers
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    run_id = done.stdout.strip()
    client = MlflowClient(tracking_uri)
    assert _wait_for_status(client, run_id, "FINISHED") == "FINISHED"
    assert client.get_run(run_id).data.metrics["value"] == 0.5
    assert [step for step, _ in _history(client, run_id, "val_accuracy")] == [0, 1, 2]


@pytest.mark.slow
def test_a_dead_writer_process_is_replaced_and_the_runs_it_made_still_end(tracking_uri, caplog):
    tracker = StudyTracker(tracking_uri, "replaced")
    first = tracker.start_trial(0, {}, {})
    first.created()
    tracker._writer._child._process.kill()  # as the OOM killer would
    tracker._writer._child._process.wait()
    with caplog.at_level("WARNING"):
        first.end("COMPLETE", metrics={"value": 0.5})  # by its run id, through a new writer
        second = tracker.start_trial(1, {}, {})
        second.end("COMPLETE", metrics={"value": 1.0})
        tracker.flush()
    assert "did not record" not in caplog.text
    client = MlflowClient(tracking_uri)
    for run, value in ((first, 0.5), (second, 1.0)):
        finished = client.get_run(run.created())
        assert finished.info.status == "FINISHED" and finished.data.metrics["value"] == value
    tracker.close()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_process_forked_from_the_training_process_does_not_keep_the_writer_waiting(
    tracking_uri, monkeypatch, caplog
):
    # a DataLoader worker forked mid-trial still lives while the trial ends on an exception
    monkeypatch.setattr(mlflow_writer, "CLOSE_TIMEOUT_S", 20)
    writer = ProcessWriter(tracking_uri)
    writer.start()
    writer.flush()
    forked_r, forked_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the forked process: waits until the test ends
        os.close(forked_w)
        os.read(forked_r, 1)
        os._exit(0)
    os.close(forked_r)
    try:
        child = writer._child._process
        writer.close()
        # the writer saw the end of its input and exited on its own, not killed after the timeout
        assert child.returncode == 0
        assert "did not finish" not in caplog.text
    finally:
        os.close(forked_w)
        os.waitpid(pid, 0)

"""In a real browser: the MLflow UI lists every trial run of a finished study under its parent
run, and report.html is self-contained with plots that load.

Drives Debian's /usr/bin/chromium through playwright (never `playwright install`: nothing is
downloaded). .ci/run installs chromium where apt-get exists; elsewhere this test skips, saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sweeper import commands
from sweeper.settings import Options
from tests.conftest import write_spec

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TRIALS = 3


@pytest.fixture
def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed; `pip install -e '.[dev]'` installs it")
    if not CHROMIUM.is_file():
        pytest.skip(
            "no browser: /usr/bin/chromium is missing; install it with "
            "`apt-get install -y chromium chromium-driver` (.ci/run does where apt-get exists)"
        )
    return sync_playwright


@pytest.mark.slow
def test_mlflow_lists_every_trial_and_the_report_images_load(workdir, tracking_uri, sync_playwright):
    spec = write_spec(workdir, budget={"trials": TRIALS, "pruner": "none", "confirm_seeds": 2})
    commands.run_study(spec, Options(trials=TRIALS, tracking_uri=tracking_uri))
    outcome = commands.make_report([spec], Options(tracking_uri=tracking_uri))
    report_page = (outcome.out / "report.html").resolve()

    with _mlflow_server(tracking_uri, workdir) as address, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        experiment = _experiment_id(address, "tiny")
        # the runs table (the UI opens on an "Overview" page otherwise); it polls: wait for "load"
        page.goto(f"{address}/#/experiments/{experiment}/runs", wait_until="load")
        # the parent run and one child run per trial
        page.get_by_text(f"{TRIALS + 1} matching runs").wait_for(timeout=90_000)
        # child runs are collapsed under the study's parent run: expand it, then see each trial
        names = page.locator("[role=gridcell][col-id='attributes.`Run Name`']")
        names.filter(has_text="study-tiny").locator("button").first.click()
        for number in range(TRIALS):
            page.get_by_text(f"trial-{number:03d}").first.wait_for(timeout=30_000)

        page.goto(report_page.as_uri(), wait_until="load")
        page.wait_for_function("Array.from(document.images).every(image => image.complete)")
        widths = page.eval_on_selector_all("img", "images => images.map(image => image.naturalWidth)")
        assert len(widths) == len(outcome.reports[0].plots) >= 4
        assert all(width > 0 for width in widths), widths
        assert page.locator("img[src^='data:image/png;base64,']").count() == len(widths)
        browser.close()


@contextlib.contextmanager
def _mlflow_server(tracking_uri: str, folder: Path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = (folder / "mlflow-server.log").open("w")
    # its own process group: the server starts worker processes, and all of them must stop
    server = subprocess.Popen(
        command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(address, server, folder / "mlflow-server.log")
        yield address
    finally:
        _stop_group(server)
        log.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_health(address: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited with {server.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{address}/health", timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise AssertionError(f"mlflow server did not answer /health in {timeout} s: {log.read_text()[-2000:]}")


def _stop_group(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # any worker that ignored SIGTERM
    server.wait(timeout=10)


def _experiment_id(address: str, name: str) -> str:
    url = f"{address}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)["experiment"]["experiment_id"]

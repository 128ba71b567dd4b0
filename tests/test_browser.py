"""What a user sees in a real browser after ``sentiflow train``: the MLflow UI (``sentiflow ui``)
and the Prefect UI (``prefect server start`` on the local database the ephemeral runs wrote).

A tiny model is trained twice through the real CLI in a subprocess (the second run shows the
data stages as Cached), with a private PREFECT_HOME. Debian's ``chromium`` runs headless and is
driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: standard library only,
no new dependency). ``--dump-dom`` with ``--virtual-time-budget`` is not enough: the MLflow run
page's metric charts stay as loading spinners under virtual time, so pages are polled in real
time until what a user must see is there. Every page is also saved as a PNG (the paths are in
the assertion messages and printed with ``-s``).

``make test`` installs chromium where it can (``make browser-tool``); without it these tests
are skipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chromium import CHROMIUM, Chromium
from tests.conftest import prefect_home, write_imdb_folder
from tests.servers import (  # the servers, started and stopped as there
    NO_JOBS,
    free_port,
    get,
    post,
    process,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.server,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed: `make browser-tool` "
                       "installs it (as root, with apt-get); `make test` does so where it can"),
]

# Checks that wait on the concurrent "training runs read well in the MLflow UI" work (experiment
# kind tag, encoded stages logged as MLflow datasets, descriptions on the registered model and
# its versions). They are real assertions, run by test_mlflow_ui_reads_as_model_training below.
AWAITING_UI_WORK = (
    ("experiment-kind: the experiment is tagged mlflow.experimentKind=custom_model_development and "
     "opens, from the address `sentiflow ui` prints, in the classic training runs view (not GenAI)"),
    ("datasets: the training run logs its encoded stages as dataset inputs, shown in the runs list's "
     "Dataset column"),
    ("descriptions: the registered model and its champion version have descriptions, shown on the "
     "model page and the version's page"),
)


# --- fixtures ----------------------------------------------------------------------------------

def _sentiflow(args: list[str], env: dict[str, str], timeout: float = 600) -> str:
    r = subprocess.run([sys.executable, "-m", "sentiflow.flows.cli", *args], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, check=False)
    assert r.returncode == 0, f"sentiflow {args[0]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """``sentiflow train`` twice on a small IMDb-like folder, Prefect in its ephemeral mode writing
    a fresh database under a private PREFECT_HOME; the second run finds every stage cached."""
    tmp = tmp_path_factory.mktemp("browser")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SENTIFLOW_"))}
    env.update({"PREFECT_HOME": prefect_home(tmp / "prefect-home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1", "COLUMNS": "200"})  # COLUMNS: rich wraps nothing we parse
    src = write_imdb_folder(tmp / "source", n_train=300, n_test=100, seed=3)
    data = tmp / "data"
    args = ["train", "--source", str(src), "--data-root", str(data), "--max-epochs", "2", "--pretrained", "none", "--embed-dim", "16",
            "--hidden-dim", "16", "--batch-size", "32", "--workers", "1"]
    first = _sentiflow(args, env)
    second = _sentiflow(args, env)
    run_id = re.search(r"MLflow run: ([0-9a-f]{32})", first).group(1)
    assert re.search(r"MLflow run: ([0-9a-f]{32})", second).group(1) == run_id  # the finished training is reused
    return {"tmp": tmp, "env": env, "data": data, "run_id": run_id}


@pytest.fixture(scope="module")
def browser(trained) -> Iterator[Chromium]:
    tmp = trained["tmp"]
    b = Chromium(tmp / "chromium-profile", tmp / "screenshots", tmp / "chromium.log")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def mlflow_ui(trained) -> Iterator[dict]:
    """``sentiflow ui`` on the data root: the MLflow UI on loopback, and the facts to check the
    pages against, read from its REST API."""
    port, log = free_port(), trained["tmp"] / "mlflow-ui.log"
    cmd = [sys.executable, "-m", "sentiflow.flows.cli", "ui", "--data-root", str(trained["data"]), "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with process(cmd, {**trained["env"], **NO_JOBS}, log, f"{base}/health", timeout=180):
        api = f"{base}/api/2.0/mlflow"
        experiment = get(f"{api}/experiments/get-by-name?experiment_name=sentiflow")["experiment"]
        run = get(f"{api}/runs/get?run_id={trained['run_id']}")["run"]
        model = get(f"{api}/registered-models/get?name=sentiflow")["registered_model"]
        champion = get(f"{api}/registered-models/alias?name=sentiflow&alias=champion")["model_version"]
        printed = re.search(r"https?://\S+", log.read_text())
        yield {"base": base, "experiment": experiment, "run": run, "model": model, "champion": champion,
               "printed_url": printed.group(0) if printed else base}


@pytest.fixture(scope="module")
def prefect_ui(trained) -> Iterator[dict]:
    """``prefect server start`` with the training's PREFECT_HOME: it reads the database the
    ephemeral runs wrote. The UI finds its API from PREFECT_SERVER_API_HOST/PORT (``--port``
    alone leaves the UI calling :4200)."""
    port, tmp = free_port(), trained["tmp"]
    env = {**trained["env"], "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false"}
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services"]
    base = f"http://127.0.0.1:{port}"
    with process(cmd, env, tmp / "prefect-server.log", f"{base}/api/health", timeout=180):
        yield {"base": base, "api": f"{base}/api"}


# --- MLflow UI ---------------------------------------------------------------------------------

def _shown(browser: Chromium, shot: str, what: str, text: str) -> str:
    path = browser.screenshot(shot)
    return f"{what} not shown at {browser.url()} (screenshot {path}); the page reads:\n{text[:3000]}"


def test_mlflow_ui_shows_the_run_its_val_acc_chart_and_the_champion(mlflow_ui, browser):
    base, exp_id = mlflow_ui["base"], mlflow_ui["experiment"]["experiment_id"]
    run = mlflow_ui["run"]["info"]
    run_name, run_id = run["run_name"], run["run_id"]

    # (a) the experiment's runs list names the training run
    text = browser.open(f"{base}/#/experiments/{exp_id}/runs", lambda t: run_name in t)
    assert run_name in text, _shown(browser, "mlflow-runs-list", f"run {run_name}", text)
    browser.screenshot("mlflow-runs-list")

    # (b) the run's page, Model metrics tab: a rendered val_acc chart (a tall window, so that
    # every chart is in view: charts out of view are not drawn) with the run's line in its legend
    browser.resize(1400, 3600)  # the default model logs ~17 metrics, val_acc among the last
    try:
        chart_js = """(() => {
            const card = [...document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"]')]
                .find(c => [...c.querySelectorAll('h1,h2,h3,h4,h5,span')].some(h => h.textContent.trim() === 'val_acc'));
            if (!card) return null;
            const r = card.getBoundingClientRect();
            return {inView: r.width > 50 && r.height > 50 && r.top >= 0 && r.bottom <= innerHeight,
                    plotted: !!card.querySelector('.js-plotly-plot svg.main-svg .plot path, .js-plotly-plot svg.main-svg .scatterlayer path'),
                    text: card.innerText};
        })()"""
        text = browser.open(f"{base}/#/experiments/{exp_id}/runs/{run_id}/model-metrics",
                            lambda t: "val_acc" in t and (browser.eval(chart_js) or {}).get("plotted"))
        chart = browser.eval(chart_js)
        shot = browser.screenshot("mlflow-run-metrics")
        assert run_name in text and "Model metrics" in text, _shown(browser, "mlflow-run-metrics", "the run page", text)
        assert chart, _shown(browser, "mlflow-run-metrics", "a val_acc chart", text)
        assert chart["inView"] and chart["plotted"], f"val_acc chart not drawn in view: {chart} (screenshot {shot})"
        assert run_name in chart["text"], f"val_acc chart without the run's line: {chart['text']!r} (screenshot {shot})"
    finally:
        browser.resize(*browser.size)

    # (c) the registered model's page: the champion version's row carries the champion alias
    version = mlflow_ui["champion"]["version"]
    assert mlflow_ui["champion"]["run_id"] == run_id
    row_js = f"""(() => [...document.querySelectorAll('[data-testid="model-version-table"] [role=row], tr')]
        .map(r => r.innerText.replace(/\\s+/g, ' ').trim())
        .find(t => t.startsWith('Version {version} ')) || null)()"""
    text = browser.open(f"{base}/#/models/sentiflow", lambda t: re.search(r"@\s*champion", t))
    row = browser.eval(row_js) or browser.eval(row_js.replace('[data-testid="model-version-table"] ', ""))
    browser.screenshot("mlflow-model")
    assert row and re.search(r"@\s*champion", row), _shown(browser, "mlflow-model", f"version {version} @ champion", text)


def test_mlflow_ui_reads_as_model_training(mlflow_ui, browser):
    """AWAITING_UI_WORK: the experiment kind, the dataset inputs and the descriptions. Every check
    runs; the failures are reported together, each under its name."""
    base, exp_id = mlflow_ui["base"], mlflow_ui["experiment"]["experiment_id"]
    run = mlflow_ui["run"]
    run_name = run["info"]["run_name"]
    failures: list[str] = []

    # experiment-kind: the tag, and the view the experiment opens in from what `sentiflow ui`
    # prints (its own experiment route if it prints one, else the experiment's page). MLflow
    # 3.17's UI opens an experiment in GenAI mode (Overview, Traces, Judges…) unless it is in
    # the "Model training" mode, where the experiment page is its runs list.
    tags = {t["key"]: t["value"] for t in mlflow_ui["experiment"].get("tags", [])}
    if tags.get("mlflow.experimentKind") != "custom_model_development":
        failures.append(f"experiment-kind: tag mlflow.experimentKind is {tags.get('mlflow.experimentKind')!r}")
    printed = mlflow_ui["printed_url"]
    start = printed if f"#/experiments/{exp_id}" in printed else f"{base}/#/experiments/{exp_id}"
    text = browser.open(start, lambda t: run_name in t, timeout=15)  # GenAI mode never names it
    route = urllib.parse.unquote(browser.url().split("#", 1)[-1])
    classic = (route.startswith(f"/experiments/{exp_id}/runs") and "workflowType=genai" not in route
               and run_name in text and "Judges" not in text)
    if not classic:
        failures.append(f"experiment-kind: {start} opens #{route}, not the classic training runs view "
                        f"(screenshot {browser.screenshot('mlflow-experiment-opens')})")

    # datasets: the run's dataset inputs, and the runs list's Dataset column naming them
    inputs = (run.get("inputs") or {}).get("dataset_inputs") or []
    names = [i["dataset"]["name"] for i in inputs]
    if not names:
        failures.append("datasets: the training run has no dataset inputs")
    else:
        # the grid draws a row in several containers (pinned and scrolling columns): join them
        row_js = f"""(() => {{
            const rows = [...document.querySelectorAll('[role=row][aria-rowindex]')];
            const mine = rows.find(r => r.innerText.includes({json.dumps(run_name)}));
            if (!mine) return '';
            return rows.filter(r => r.getAttribute('aria-rowindex') === mine.getAttribute('aria-rowindex'))
                .map(r => r.innerText.replace(/\\s+/g, ' ')).join(' | ');
        }})()"""
        browser.open(f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning",
                     lambda t: run_name in t and any(n in t for n in names))
        row = browser.eval(row_js)
        if not any(n in row for n in names):
            failures.append(f"datasets: the runs list's row for {run_name} shows none of {names}: {row!r} "
                            f"(screenshot {browser.screenshot('mlflow-runs-datasets')})")
        else:
            browser.screenshot("mlflow-runs-datasets")

    # descriptions: the model's on its page, the champion version's on the version's page
    version = mlflow_ui["champion"]["version"]
    for what, desc, route in (("model", mlflow_ui["model"].get("description"), "#/models/sentiflow"),
                              (f"version {version}", mlflow_ui["champion"].get("description"),
                               f"#/models/sentiflow/versions/{version}")):
        words = re.sub(r"[`*_#]", "", desc or "").split()[:8]  # its first words, as Markdown renders them
        if not words:
            failures.append(f"descriptions: the {what} has no description")
            continue
        head = " ".join(words)
        text = browser.open(f"{base}/{route}", lambda t, head=head: head in " ".join(t.split()))
        shot = browser.screenshot(f"mlflow-description-{what.replace(' ', '-')}")
        if head not in " ".join(text.split()):
            failures.append(f"descriptions: the {what}'s description ({head!r}…) is not on {route} (screenshot {shot})")

    assert not failures, "awaiting the training-runs-in-the-UI work:\n" + "\n".join(failures)


# --- Prefect UI --------------------------------------------------------------------------------

def test_prefect_ui_shows_the_flow_runs_and_their_task_states(trained, prefect_ui, browser):
    api, base = prefect_ui["api"], prefect_ui["base"]
    trains = post(f"{api}/flow_runs/filter", {"flows": {"name": {"any_": ["train"]}}, "sort": "START_TIME_ASC"})
    assert len(trains) == 2 and all(r["state"]["type"] == "COMPLETED" for r in trains), trains
    children = {
        t["id"]: post(f"{api}/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [t["id"]]}}})
        for t in trains}
    assert all(len(c) == 1 for c in children.values()), children  # each train ran one prepare-data subflow

    # the address `prefect server start` prints opens the UI; its Runs page lists both train runs
    text = browser.open(base, lambda t: "Runs" in t)
    text = browser.open(f"{base}/v2/runs", lambda t: all(r["name"] in t for r in trains))
    for r in trains:
        assert r["name"] in text, _shown(browser, "prefect-runs", f"train flow run {r['name']}", text)
    assert re.search(r"\btrain\b", text) and "Completed" in text
    browser.screenshot("prefect-runs")

    # a data flow run's page, Task Runs tab: the nine stages and one task per shard (a shard a part
    # for this small source: six), Completed the first time and Cached the second
    stages = ["ingest", "split", "tokenize-train", "tokenize-val", "tokenize-test", "vocab", "encode-train",
              "encode-val", "encode-test"]
    for r, state in zip(trains, ("Completed", "Cached")):
        (sub,) = children[r["id"]]
        browser.open(f"{base}/v2/runs/flow-run/{sub['id']}", lambda t: "Task Runs" in t)
        assert browser.click("Task Runs"), _shown(browser, f"prefect-{state.lower()}", "the Task Runs tab", browser.text())
        summary = f"({len(stages) + 6} {state})"  # the tab's head: "15 Task runs (15 Cached)"
        text = browser.wait(lambda t, summary=summary: summary in t and "encode-test" in t and "ingest" in t, timeout=30)
        shot = browser.screenshot(f"prefect-task-runs-{state.lower()}")
        assert summary in text, f"no {summary!r} on {browser.url()} (screenshot {shot}):\n{text[:3000]}"
        lines = [line.strip() for line in text.splitlines()]
        for stage in stages:
            # a task run's name (the stage, or the stage and a suffix), then its state
            at = [i for i, line in enumerate(lines) if line == stage or line.startswith(stage + "-")]
            assert at, f"task run {stage} not listed on {browser.url()} (screenshot {shot}):\n{text[:3000]}"
            assert state in lines[at[0] + 1:at[0] + 4], \
                f"task run {stage} not {state}: {lines[at[0]:at[0] + 4]} (screenshot {shot})"

    # the second train run's Artifacts tab: the training summary
    browser.open(f"{base}/v2/runs/flow-run/{trains[-1]['id']}", lambda t: "Artifacts" in t)
    assert browser.click("Artifacts"), _shown(browser, "prefect-artifacts", "the Artifacts tab", browser.text())
    text = browser.wait(lambda t: "training-summary" in t, timeout=30)
    assert "training-summary" in text, _shown(browser, "prefect-artifacts", "the training-summary artifact", text)
    browser.screenshot("prefect-artifacts")

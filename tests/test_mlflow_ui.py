"""The MLflow UI, in a real browser, can compare evaluations: two evaluation stages run through
``hmsa submit`` (submitit's local executor) against a real ``mlflow server`` on 127.0.0.1, then headless
Chromium renders the compare page of two of their per-setting runs. ``miou`` must be one row holding
both runs' values, and each ``iou/<class>`` a row of its own; the REST search ``metrics.miou > 0`` must
find every per-setting run and nothing else."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from browser import chromium
from mlflow_server import Server, free_port, tags
from test_evaluate import write_model

from hmsa import tracking
from hmsa.data.labels import CITYSCAPES_CLASSES
from hmsa.orchestration.launch import submit

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("hierarchical:0.5,1", "avgpool:0.5,1")
# Where the screenshot goes, to look at (HMSA_UI_SHOTS=DIR keeps it; else the test's tmp dir).
SHOTS = os.environ.get("HMSA_UI_SHOTS", "")


def _evaluate_stage(stage: str, model: Path, data: Path, tmp: Path) -> int:
    argv = ["evaluate", "--config", str(ROOT / "configs/experiments/tiny.yaml"), "--model", str(model),
            "--out-dir", str(tmp / "results" / stage), *[a for s in SETTINGS for a in ("--setting", s)],
            "data.dataset=cityscapes", f"data.root={data / 'cityscapes'}", "eval.max_images=0", "eval.save_maps=0"]
    return submit(stage, "evaluate", tmp / "runs" / stage, ROOT / "configs/cluster/local.yaml", argv,
                  tags={"hmsa.paper_rows": f"table2:{stage[-1]}"})


# Runs in the page: the compare view's metric table is virtualised (react-virtualized renders only the
# rows in view), so a plain DOM dump never holds all of them. Scroll its value grid from top to bottom
# and read every rendered row: [metric key, [value of each run, left to right]] in table order.
SCAN_METRICS = """(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')];
  const keyGrid = grids.find(g => g.querySelector('a[href*="#/metric?"]'));
  if (!keyGrid) return null;
  const valueGrid = grids[grids.indexOf(keyGrid) + 1];
  const keys = {}, values = {};
  const height = parseInt(valueGrid.firstElementChild.style.height) || 0;
  for (let y = 0; y <= height; y += 90) {
    valueGrid.scrollTop = keyGrid.scrollTop = y;
    valueGrid.dispatchEvent(new Event('scroll'));
    await sleep(250);
    keyGrid.querySelectorAll('div[style*="top"]').forEach(c => { keys[parseInt(c.style.top)] = c.textContent.trim(); });
    valueGrid.querySelectorAll('div[style*="top"]').forEach(c => {
      (values[parseInt(c.style.top)] ||= {})[parseInt(c.style.left)] = c.textContent.trim(); });
  }
  const tops = Object.keys(keys).map(Number).sort((a, b) => a - b);
  const rows = tops.map(t => [keys[t], Object.keys(values[t] || {}).map(Number).sort((a, b) => a - b)
                                           .map(l => values[t][l])]);
  const miou = tops.find(t => keys[t] === 'miou');
  keyGrid.scrollIntoView({block: 'center'});
  valueGrid.scrollTop = keyGrid.scrollTop = Math.max(0, (miou || 0) - 90);  // the screenshot shows miou
  valueGrid.dispatchEvent(new Event('scroll'));
  await sleep(1000);
  return rows;
})()"""


def metric_rows(url: str, shot: Path, timeout: float = 600) -> list[list]:
    """Open ``url`` in headless Chromium driven over the DevTools protocol; return the compare view's
    metric rows (``SCAN_METRICS``) and save a screenshot of the page as scrolled to the miou row."""
    port = free_port()
    proc = subprocess.Popen([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--hide-scrollbars", "--no-first-run", "--disable-extensions",
                             "--remote-debugging-address=127.0.0.1", f"--remote-debugging-port={port}",
                             "--window-size=1400,1400", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        return asyncio.run(asyncio.wait_for(_drive(port, url, shot), timeout))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


async def _drive(port: int, url: str, shot: Path) -> list[list]:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        while True:  # the browser's DevTools endpoint comes up after a moment
            try:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [t for t in await r.json() if t["type"] == "page"]
                if pages:
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 10**6))

            async def call(method: str, **params: object) -> dict:
                n = next(ids)
                await ws.send_json({"id": n, "method": method, "params": params})
                while True:  # skip events until our answer
                    msg = await ws.receive_json()
                    if msg.get("id") == n:
                        if "error" in msg:
                            raise RuntimeError(f"{method}: {msg['error']}")
                        return msg["result"]

            await call("Page.navigate", url=url)
            rows = None
            while rows is None:  # the UI fetches the runs, then renders the table
                await asyncio.sleep(2)
                out = await call("Runtime.evaluate", expression=SCAN_METRICS, awaitPromise=True,
                                 returnByValue=True)
                rows = out["result"].get("value")
            png = await call("Page.captureScreenshot", format="png")
            shot.write_bytes(base64.b64decode(png["data"]))
            return rows


@pytest.mark.slow
def test_compare_view_puts_miou_on_one_row(mlflow_server: Server, embedded_data: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv(tracking.ENV_EXPERIMENT, "ui-compare")
    monkeypatch.setenv(tracking.ENV_INVOCATION, "inv-ui")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp = tracking.ensure_experiment("ui-compare")
    trained = {}
    for stage, bias in (("evaluate_a", "road"), ("evaluate_b", "sky")):
        # a model file as `hmsa train` leaves it: train.json beside it names the training run
        (tmp_path / f"results/train_{stage[-1]}").mkdir(parents=True)
        model = write_model(tmp_path / f"results/train_{stage[-1]}/model.pt", 19, CITYSCAPES_CLASSES,
                            seed=len(bias), bias=CITYSCAPES_CLASSES.index(bias))
        trained[stage] = tracking.create_stage_run(f"train_{stage[-1]}", exp, None, {})
        (model.parent / "train.json").write_text(json.dumps({"mlflow_run_id": trained[stage]}))
        assert _evaluate_stage(stage, model, embedded_data, tmp_path) == 0

    evaluations = mlflow_server.search(exp, "tags.`hmsa.kind` = 'evaluation'")
    assert len(evaluations) == 2 * len(SETTINGS)  # one run per (model, setting)
    positive = mlflow_server.search(exp, "metrics.miou > 0")
    assert {r["info"]["run_id"] for r in positive} == {r["info"]["run_id"] for r in evaluations}
    by_name = {r["info"]["run_name"]: r for r in evaluations}
    a, b = by_name["evaluate_a · hierarchical:0.5,1"], by_name["evaluate_b · hierarchical:0.5,1"]
    for stage, run in (("evaluate_a", a), ("evaluate_b", b)):
        t = tags(run)
        assert t["hmsa.local_job_id"] and "hmsa.slurm_job_id" not in t  # the local executor's id, named so
        assert t["hmsa.train_run_id"] == trained[stage] and t["hmsa.paper_rows"] == f"table2:{stage[-1]}"
        assert run["inputs"]["dataset_inputs"][0]["dataset"]["name"] == "cityscapes-val"

    ids = [a["info"]["run_id"], b["info"]["run_id"]]
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([exp])})
    shot = Path(SHOTS or tmp_path) / "mlflow-compare.png"
    rows = metric_rows(f"{mlflow_server.url}/#/compare-runs?{query}", shot)
    assert shot.stat().st_size > 0

    values = [{m["key"]: m["value"] for m in run["data"]["metrics"]} for run in (a, b)]
    keys = [key for key, _ in rows]
    assert len(keys) == len(set(keys)) and set(keys) == set(values[0]) | set(values[1])
    assert keys.count("miou") == 1  # one row for both runs, not one per setting
    table = dict(rows)
    assert [float(v) for v in table["miou"]] == [values[0]["miou"], values[1]["miou"]]
    iou = [k for k in keys if k.startswith("iou/")]
    assert len(iou) >= 10  # the 19 classes, less those neither model predicts nor the 2 images hold
    for key in iou:
        assert [_number(v) for v in table[key]] == [v.get(key) for v in values]


def _number(text: str) -> float | None:
    """A cell's value; None for an empty cell (a run without that metric)."""
    try:
        return float(text)
    except ValueError:
        return None

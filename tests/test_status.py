"""``sentiflow status``: the stages a prepare would reuse, found without running anything."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sentiflow.flows.data_flow import RUNS, DataConfig, prepare_data
from sentiflow.flows.status import data_status
from tests.conftest import make_reviews, write_imdb_folder

ROOT = Path(__file__).resolve().parents[1]


def _config(source: Path) -> DataConfig:
    return DataConfig(source=str(source))


def test_status_before_any_run_waits_on_ingest(imdb_folder, data_root):
    rows = {r.task: r for r in data_status(_config(imdb_folder), data_root)}
    assert list(rows) == list(RUNS)
    assert rows["ingest"].state == "missing" and rows["ingest"].key
    assert all(r.state.startswith("waits for") for name, r in rows.items() if name != "ingest")


@pytest.mark.usefixtures("prefect_harness")
def test_status_names_the_keys_the_flow_stored_and_sees_what_changed(tmp_path, data_root):
    src = write_imdb_folder(tmp_path / "src")
    result = prepare_data(config=_config(src), data_root=str(data_root), workers=1)
    rows = {r.task: r for r in data_status(_config(src), data_root)}
    # the keys the flow wrote, every stage cached
    assert {n: r.key for n, r in rows.items()} == {n: ref.key for n, ref in result.refs().items()}
    assert {r.state for r in rows.values()} == {"cached"}
    assert rows["tokenize-train"].shards == "1/1 shards stored"

    # a shard folder removed: its part says so
    shard = next((data_root / "encode-shard").iterdir())
    shutil.rmtree(shard)
    assert any(r.shards == "0/1 shards stored" for r in data_status(_config(src), data_root))

    # another tokenizer setting: the same ingest and split, new tokenize keys
    other = DataConfig(source=str(src), tokenize={"lowercase": False})
    rows = {r.task: r for r in data_status(other, data_root)}
    assert rows["split"].state == "cached" and rows["tokenize-train"].state == "missing"
    assert rows["vocab"].state == "waits for tokenize-train"

    # reviews appended: a new ingest key, nothing planned past it
    pq.write_table(make_reviews(250, prefix="train-"), src / "train.parquet")
    rows = data_status(_config(src), data_root)
    assert rows[0].state == "missing" and rows[1].state == "waits for ingest"


def test_status_command_starts_no_prefect_and_imports_no_model_libraries(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(make_reviews(20), src / "train.parquet")
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from sentiflow.flows.cli import app\n"
        f"r = CliRunner().invoke(app, ['status', '--source', {str(src)!r}, '--data-root', {str(tmp_path / 'd')!r}, '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(r.output)\n"
        "print(sorted(m for m in ('spacy', 'torch', 'mlflow', 'prefect') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    *table, loaded = out.stdout.strip().splitlines()
    assert loaded == "[]"
    rows = json.loads("\n".join(table))["stages"]
    assert rows[0]["task"] == "ingest" and rows[0]["state"] == "missing"

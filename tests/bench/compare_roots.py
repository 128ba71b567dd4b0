"""Compare two data roots built by two versions of the code from the same source and options:
every stage's params, row counts and file checksums (the keys differ where a stage's code
changed: they hash its source), the training runs' model/train params and per-epoch metrics
(timings aside). Exit 0 when all agree.

    python tests/bench/compare_roots.py OLD_ROOT NEW_ROOT

A refactoring that must not change what the pipeline computes is checked this way: build
``OLD_ROOT`` with the old commit (``pip wheel`` it, install it with ``--target``, run its CLI with
that folder on ``PYTHONPATH``) and ``NEW_ROOT`` with this checkout, both with
``sentiflow train --source SRC --max-epochs 2 --workers 1``.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path


def stages(root: Path) -> dict[str, set[tuple[str, ...]]]:
    """Stage name → what its folders hold, keys aside: (params, rows, file checksums) each."""
    out: dict[str, set[tuple[str, ...]]] = {}
    for manifest in root.glob("*/*/manifest.json"):
        d = json.loads(manifest.read_text())
        out.setdefault(d["stage"], set()).add((
            json.dumps(d["params"], sort_keys=True), json.dumps(d.get("rows"), sort_keys=True),
            json.dumps({name: f["sha256"] for name, f in d["files"].items()}, sort_keys=True)))
    return out


def training(root: Path) -> tuple[list[tuple[str, int, float]], dict[str, str]]:
    """Every run's metrics (key, step, value; timings left out) and its model/train params."""
    db = sqlite3.connect(root / "mlflow.db")
    metrics = db.execute("select m.key, m.step, m.value from metrics m join runs r on r.run_uuid = m.run_uuid "
                         "where m.key not like '%seconds' order by r.start_time, m.key, m.step").fetchall()
    params = db.execute("select key, value from params where key like 'model.%' or key like 'train.%'").fetchall()
    return metrics, dict(params)


def main(old: Path, new: Path) -> int:
    ok = True
    before, after = stages(old), stages(new)
    for name in sorted(set(before) | set(after)):
        same = before.get(name) == after.get(name)
        ok &= same
        print(f"{name:15s} folders {len(before.get(name, ())):3d} vs {len(after.get(name, ())):3d}: "
              f"params, rows and checksums {'identical' if same else 'DIFFER'}")
    (m_old, p_old), (m_new, p_new) = training(old), training(new)
    ok &= m_old == m_new and p_old == p_new
    print(f"metrics: {len(m_old)} vs {len(m_new)} {'identical' if m_old == m_new else 'DIFFER'}; "
          f"params: {len(p_old)} vs {len(p_new)} {'identical' if p_old == p_new else 'DIFFER'}")
    for a, b in zip(m_old, m_new):
        if a != b:
            print("  differs:", a, b)
    for key, step, value in m_new:
        if key in ("train_loss", "val_acc", "test_acc"):
            print(f"  {key} step {step}: {value:.6f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))

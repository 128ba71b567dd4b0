"""Compare two data roots built by two versions of the code from the same source and options:
every stage's params, row counts and file checksums (the keys differ where a stage's code
changed: they hash its source), the training runs' model/train params and per-epoch metrics
(timings aside). Exit 0 when all agree.

    python tests/bench/compare_roots.py OLD_ROOT NEW_ROOT

A refactoring that must not change what the pipeline computes is checked this way: build
``OLD_ROOT`` with the old commit (``pip wheel`` it, install with ``--target``, run its CLI with
that folder on ``PYTHONPATH``) and ``NEW_ROOT`` with this checkout, both with
``sentiflow train --source SRC --max-epochs 2 --workers 1``.
"""
import json
import sqlite3
import sys
from pathlib import Path


def stages(root):
    out = {}
    for m in Path(root).glob("*/*/manifest.json"):
        d = json.loads(m.read_text())
        sig = (d["stage"], json.dumps(d["params"], sort_keys=True), json.dumps(d.get("rows"), sort_keys=True),
               json.dumps({k: v["sha256"] for k, v in d["files"].items()}, sort_keys=True))
        out.setdefault(d["stage"], set()).add(sig)
    return out

def metrics(root):
    db = sqlite3.connect(Path(root) / "mlflow.db")
    rows = db.execute("select r.name, m.key, m.step, m.value from metrics m join runs r on r.run_uuid=m.run_uuid "
                      "order by r.start_time, m.key, m.step").fetchall()
    params = db.execute("select p.key, p.value from params p join runs r on r.run_uuid=p.run_uuid "
                        "where p.key like 'model.%' or p.key like 'train.%'").fetchall()
    return rows, dict(params)

a, b = sys.argv[1], sys.argv[2]
sa, sb = stages(a), stages(b)
ok = True
for st in sorted(set(sa) | set(sb)):
    same = sa.get(st) == sb.get(st)
    ok &= same
    print(f"{st:15s} folders {len(sa.get(st, ())):3d} vs {len(sb.get(st, ())):3d}  params+rows+checksums {'identical' if same else 'DIFFER'}")
ma, pa = metrics(a); mb, pb = metrics(b)
ka = [(k, s, v) for _, k, s, v in ma if k != "epoch_seconds" and not k.endswith("_seconds")]
kb = [(k, s, v) for _, k, s, v in mb if k != "epoch_seconds" and not k.endswith("_seconds")]
print("metrics compared:", len(ka), "vs", len(kb), "identical" if ka == kb else "DIFFER")
for (k1, s1, v1), (k2, s2, v2) in zip(ka, kb):
    if (k1, s1, v1) != (k2, s2, v2):
        print("  ", k1, s1, v1, "|", k2, s2, v2)
for k in sorted(set(pa) | set(pb)):
    if pa.get(k) != pb.get(k):
        print("param differs:", k, pa.get(k), pb.get(k))
print("params compared:", len(pa))
for k, s, v in ka:
    if k in ("val_acc", "test_acc", "train_loss"):
        print(f"   {k} step {s}: {v:.6f}")
sys.exit(0 if ok and ka == kb else 1)

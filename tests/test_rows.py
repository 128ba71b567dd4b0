"""One path from a raw value to a scored row (issue 17): ``sentiflow.tasks.core.rows`` (status,
OOV share, the ``max_oov`` cut) and ``sentiflow.tasks.core.inference.score_texts``, here in one
process with a small network; ``score`` on a file and ``predict``'s rows give the same answers.
Expected values come from another path: spaCy's tokenizer called here, ids looked up by hand and
the network's packed ``forward`` run review by review. (Three processes, the CLI and ``mlflow
models serve``: ``tests/test_served_model.py``.)"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import spacy
import torch

from sentiflow.tasks.core.inference import Scorer, score_texts
from sentiflow.tasks.core.model import ModelParams, SentimentRNN
from sentiflow.tasks.core.rows import in_domain, records, status_of
from sentiflow.tasks.core.text import PAD, UNK, TokenizeParams, Vocab
from sentiflow.tasks.scoring.predict import label_of, read_lines, scored_rows
from sentiflow.tasks.scoring.score import ScoreParams, score
from tests.conftest import NEGATIVE, NEUTRAL, POSITIVE

BIG = "the plot was great but the actors were boring " * 23_000  # ~1 MB: cut to 100,000 characters
VALUES = [None, float("nan"), "", "   \n", 5, 2.5, True, b"great film", b"caf\xe9", BIG,
          "A great and moving film.", "Awful, boring and dreadful.", "zyxw qvut wibble great film",
          "wibble flimflam zyxw", "Фильм 😀"]
STATUSES = ["null", "null", "empty", "empty", "not_text", "not_text", "not_text", "ok", "not_text", "ok",
            "ok", "ok", "ok", "ok", "ok"]


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    torch.manual_seed(3)
    vocab = Vocab([UNK, PAD, *POSITIVE, *NEGATIVE, *NEUTRAL, "was", "but", "were", ",", "."])
    net = SentimentRNN(len(vocab), ModelParams(embed_dim=8, hidden_dim=8, head="last+max", dropout=0.0),
                       pad_id=vocab.pad_id)
    return Scorer(net, vocab, TokenizeParams())


def by_hand(scorer: Scorer, text: str) -> tuple[float, float]:
    """(P(positive), OOV share) of one review: spaCy's tokens, ids looked up one by one, the
    packed forward on a batch of one. A review longer than 100,000 characters (the budget of a
    model without ``max_len``) is read up to its last space within them."""
    if len(text) > 100_000:
        text = text[:text.rfind(" ", 0, 100_001)]
    tokens = [t.lower_ for t in spacy.blank("en").tokenizer(text) if not t.is_space]
    index = {s: i for i, s in enumerate(scorer.vocab.itos)}
    ids = [index.get(t, scorer.vocab.unk_id) for t in tokens]
    with torch.inference_mode():
        logit = scorer.net.eval()(torch.tensor(ids).unsqueeze(1), torch.tensor([len(ids)]))
    return float(torch.sigmoid(logit)[0]), sum(i == scorer.vocab.unk_id for i in ids) / len(ids)


def test_status_of_each_kind_of_value():
    assert [status_of(v) for v in VALUES] == STATUSES
    assert status_of(np.float64("nan")) == "null" and status_of(np.str_("  ")) == "empty"


def test_score_texts_gives_each_row_its_status_probability_and_oov_share(scorer):
    statuses, probs, oov = score_texts(scorer, VALUES)
    assert statuses == STATUSES
    assert probs.dtype == oov.dtype == np.float64 and len(probs) == len(oov) == len(VALUES)
    for value, status, p, o in zip(VALUES, statuses, probs, oov):
        if status != "ok":
            assert math.isnan(p) and math.isnan(o)
            continue
        want_p, want_o = by_hand(scorer, value.decode() if isinstance(value, bytes) else value)
        assert p == pytest.approx(want_p, abs=1e-5) and o == pytest.approx(want_o, abs=1e-12)
    assert score_texts(scorer, []) == ([], pytest.approx(np.zeros(0)), pytest.approx(np.zeros(0)))


def test_max_oov_cuts_rows_above_it(scorer):
    _, probs, oov = score_texts(scorer, VALUES)
    cut = float(oov[12])  # "zyxw qvut wibble great film": 3 of 5 tokens unknown
    assert cut == pytest.approx(0.6)
    statuses, cut_probs, cut_oov = score_texts(scorer, VALUES, max_oov=cut)
    np.testing.assert_array_equal(cut_oov, oov)  # the share is known either way
    for i, (s, o) in enumerate(zip(STATUSES, oov)):
        if s == "ok" and o > cut:
            assert statuses[i] == "out_of_domain" and math.isnan(cut_probs[i])
        else:  # at the cut is kept
            assert statuses[i] == s and (math.isnan(cut_probs[i]) == math.isnan(probs[i]))
    assert statuses[13] == "out_of_domain" and statuses[12] == "ok"
    assert in_domain(np.array([np.nan, 1.0, 0.3]), 0.2).tolist() == [True, False, False]
    assert in_domain(np.array([np.nan, 1.0]), None).tolist() == [True, True]


def test_records_are_json_with_null_never_nan(scorer):
    out = records(*score_texts(scorer, VALUES))
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text)[0] == {"prob_pos": None, "status": "null", "oov_share": None}
    assert all(type(r["prob_pos"]) is float for r in out if r["status"] == "ok")


def test_score_stage_and_predict_rows_answer_as_score_texts(scorer, tmp_path):
    """The score stage's own path (statuses and token ids made by its worker processes, then
    judged) and ``predict``'s rows give what ``score_texts`` gives, ``max_oov`` included."""
    text_rows = [v for v in VALUES if v is None or isinstance(v, str)]
    src = tmp_path / "rows.parquet"
    ids = [f"r{i}" for i in range(len(text_rows))]
    pq.write_table(pa.table({"id": ids, "text": pa.array(text_rows, pa.string())}), src, row_group_size=4)
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        out.mkdir()
        score(scorer, str(src), out, ScoreParams(max_oov=0.6), workers=workers, batch_rows=3)
        pred = pq.read_table(out / "predictions.parquet").to_pydict()
        statuses, probs, oov = score_texts(scorer, text_rows, max_oov=0.6)
        assert pred["status"] == statuses
        for got, want in ((pred["prob_pos"], probs), (pred["oov_share"], oov)):
            assert [g is None for g in got] == np.isnan(want).tolist()
            np.testing.assert_allclose([g for g in got if g is not None], want[~np.isnan(want)], atol=1e-6)

    rows = scored_rows(scorer, VALUES, threshold=0.5, max_oov=0.6)
    statuses, probs, oov = score_texts(scorer, VALUES, max_oov=0.6)
    assert [r["text"] for r in rows] == VALUES and [r["status"] for r in rows] == statuses
    assert [list(r) for r in rows[:1]] == [["text", "prob_pos", "label", "status", "oov_share"]]
    for r, p in zip(rows, probs):
        assert (r["prob_pos"] is None) == math.isnan(p) and r["label"] == label_of(r["prob_pos"], 0.5)
    assert label_of(0.5, 0.5) == "negative" and label_of(0.51, 0.5) == "positive"
    assert label_of(None, 0.5) is None


def test_read_lines_keeps_every_line_and_bytes_that_are_not_utf8():
    assert read_lines([b"great film\r\n", b"\n", b"caf\xe9\n", "жёлтый\n".encode()]) == \
        ["great film", "", b"caf\xe9", "жёлтый"]


def test_core_imports_with_prefect_and_mlflow_blocked():
    """The model's code, row rules included, imports nothing but its libraries and does nothing
    when imported: the environment is as it was (the libraries' defaults are the flows')."""
    code = ("import os, sys; sys.modules['prefect'] = None; sys.modules['mlflow'] = None; "
            "before = dict(os.environ); "
            "import sentiflow.tasks.core.inference, sentiflow.tasks.core.rows; "
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items()); "
            "print(sorted(m for m in sys.modules if m.startswith('sentiflow')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = eval(proc.stdout.strip().splitlines()[-1])
    assert all(m.startswith("sentiflow.tasks.core") or m in ("sentiflow", "sentiflow.tasks")
               for m in loaded), loaded

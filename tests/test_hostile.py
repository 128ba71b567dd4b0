"""Hostile input (issue 10): a generated corpus of awkward reviews and broken files through
ingest, training and scoring. Each ends in a documented outcome (docs/reliability.md), and no
valid row near a bad one is lost or changed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sentiflow.tasks.data.ingest import ingest, read_part
from sentiflow.tasks.data.reviews import SourceError
from tests.conftest import make_reviews

# awkward but valid reviews: ingest keeps each one byte for byte, scoring scores each one
AWKWARD = {
    "quotes": 'He said "great", then ""awful"" — and \'fine\'.',
    "newlines": "Line one, great,\nline two,\r\nand three.",
    "control": "Bell\x07, escape \x1b[31mred\x1b[0m, form feed\x0c and tab\t: wonderful",
    "emoji": "😀😀 great 👍🏽 film 🎬",
    "html": "<script>alert('x')</script><b>bold</b> &amp; <br /><br />boring",
    "scripts": "Фильм отличный. 这部电影很好看。 الفيلم رائع. superb",
    "megabyte": "great moving film " * 60_000,  # ~1 MB
    "tokens": " ".join(f"w{i}" for i in range(100_000)),  # 100,000 distinct tokens
    "commas": "a, b, c; d\te",
}


def _write_csv(path: Path, rows: list[tuple[str, str, object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
        w.writerow(["id", "text", "label"])
        w.writerows(rows)


def _corpus(folder: Path) -> dict[str, str]:
    """train.csv: ordinary reviews with the awkward ones among them; test.csv likewise."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = make_reviews(200, seed=4).to_pydict()
    rows = list(zip(plain["id"], plain["text"], plain["label"]))
    for i, (name, text) in enumerate(AWKWARD.items()):
        rows.insert(10 + 15 * i, (f"awkward-{name}", text, i % 2))
    _write_csv(folder / "train.csv", rows)
    _write_csv(folder / "test.csv", rows[:60])
    return {r[0]: r[1] for r in rows}


def test_awkward_reviews_survive_ingest_byte_for_byte(tmp_path):
    expected = _corpus(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    counts = ingest(str(tmp_path / "src"), out)
    got = read_part(out, "train").to_pydict()
    assert counts["train"] == len(expected) == len(got["id"])
    assert dict(zip(got["id"], got["text"])) == expected  # every row, every byte, in place


def test_awkward_reviews_train_and_score(tmp_path, prefect_harness):
    """Through the data flow, a short training (reviews cut at 300 tokens, as ``--max-len``
    does) and scoring of the same file: one row out per row in, each scored."""
    from sentiflow.flows.data_flow import DataConfig, prepare_data
    from sentiflow.storage.settings import Settings
    from sentiflow.tasks.core.inference import Scorer
    from sentiflow.tasks.core.model import ModelParams
    from sentiflow.tasks.core.text import TokenizeParams, Vocab
    from sentiflow.tasks.scoring.score import ScoreParams, score
    from sentiflow.tasks.training.train import TrainConfig, TrainParams, build_model, train

    expected = _corpus(tmp_path / "src")
    data = prepare_data(config=DataConfig(source=str(tmp_path / "src")), data_root=str(tmp_path / "data"),
                        workers=1)
    assert data.encoded["train"].manifest()["total_rows"] + data.encoded["val"].manifest()["total_rows"] \
        == len(expected)
    config = TrainConfig(model=ModelParams(embed_dim=8, hidden_dim=8, bidirectional=False, head="last"),
                         train=TrainParams(max_epochs=1, batch_size=32, max_len=300, pretrained=None,
                                           lr_schedule="constant", average=None))
    settings = Settings(data_root=tmp_path / "data", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    result = train(config, data.encoded["train"], data.encoded["val"], data.vocab, None, settings)
    assert result.epochs == 1

    vocab = Vocab.read(data.vocab.file("vocab.parquet"))
    net, _ = build_model(vocab, config)
    out = tmp_path / "scored"
    out.mkdir()
    score(Scorer(net, vocab, TokenizeParams(), max_len=300), str(tmp_path / "src" / "train.csv"), out,
          ScoreParams(split="all"), workers=1)
    pred = pq.read_table(out / "predictions.parquet").to_pydict()
    assert pred["id"] == list(expected) and set(pred["status"]) == {"ok"}
    assert all(0 <= p <= 1 for p in pred["prob_pos"])


@pytest.mark.parametrize("bad, row, column, message", [
    ((None, "", 1), 4, "text", "empty review text"),  # rows count from 1 after the header
    ((None, "   \n ", 0), 4, "text", "empty review text"),
    ((None, "a fine film", 2), 4, "label", "label 2 is not 0/1"),
    ((None, "a fine film", "maybe"), 4, "label", "label 'maybe'"),
    (("r1", "a fine film", 1), None, None, "duplicate id 'r1' ("),
])
def test_a_bad_row_is_named_and_nothing_is_written(tmp_path, bad, row, column, message):
    src = tmp_path / "src"
    src.mkdir()
    plain = make_reviews(10, seed=2).to_pydict()
    rows = list(zip(plain["id"], plain["text"], plain["label"]))
    rows.insert(3, (bad[0] or "bad-row", bad[1], bad[2]))
    _write_csv(src / "train.csv", rows)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SourceError) as e:
        ingest(str(src), out)
    text = str(e.value)
    assert "train.csv" in text and message in text
    if row is not None:
        assert f"row {row}," in text and f"column {column!r}" in text
    else:  # both places named
        assert "train.csv, row 2 and" in text and "train.csv, row 4)" in text
    assert not list(out.iterdir())  # nothing half-written


def test_invalid_utf8_and_wrong_types_are_named(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.csv").write_bytes(b"id,text,label\nr0,fine film,1\nr1,caf\xe9 au lait,0\nr2,good,1\n")
    with pytest.raises(SourceError, match=r"train\.csv, row 2, column 'text': not valid UTF-8 \(byte 3"):
        ingest(str(src), tmp_path)
    pq.write_table(pa.table({"id": ["a", "b"], "text": [1, 2], "label": [0, 1]}), src / "train.parquet")
    (src / "train.csv").unlink()
    with pytest.raises(SourceError, match=r"column 'text': expected text, found int64"):
        ingest(str(src), tmp_path)


def test_scoring_keeps_every_row_of_a_hostile_file_with_a_status(tmp_path):
    """Bad rows get a status in place; the valid rows around them are scored."""
    from sentiflow.tasks.core.inference import Scorer
    from sentiflow.tasks.core.model import ModelParams, SentimentRNN
    from sentiflow.tasks.core.text import PAD, UNK, TokenizeParams, Vocab
    from sentiflow.tasks.scoring.score import ScoreParams, score

    path = tmp_path / "hostile.csv"
    lines = [b"id,text,label", b"a,good film,1", b"b,,0", b'c,"quoted, with\nnewline",1',
             b"d,caf\xe9 not utf-8,0", b"e,   ,1", b"f,<script>x</script> fine,0", b"a,duplicate id,1"]
    path.write_bytes(b"\n".join(lines) + b"\n")
    vocab = Vocab([UNK, PAD, "good", "film", "fine"])
    net = SentimentRNN(len(vocab), ModelParams(embed_dim=4, hidden_dim=4, bidirectional=False, head="last"),
                       pad_id=vocab.pad_id)
    out = tmp_path / "out"
    out.mkdir()
    score(Scorer(net, vocab, TokenizeParams()), str(path), out, ScoreParams(), workers=1)
    pred = pq.read_table(out / "predictions.parquet").to_pydict()
    assert pred["id"] == ["a", "b", "c", "d", "e", "f", "a"]
    assert pred["status"] == ["ok", "empty", "ok", "not_text", "empty", "ok", "ok"]
    assert [p is None for p in pred["prob_pos"]] == [s != "ok" for s in pred["status"]]
    assert not np.isnan([p for p in pred["prob_pos"] if p is not None]).any()

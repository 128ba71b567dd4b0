"""Long reviews (issue 19, item 6): a review is cut to a character budget before spaCy sees it.

* On real IMDb rows the budget changes nothing: no review is cut, and even a budget of
  ``CHARS_PER_TOKEN`` characters per kept token keeps the first ``max_len`` tokens as they are; a
  cut at any point gives a prefix of the whole review's tokens.
* A huge review is scored as its first budget characters (cut back to a word, checked here with
  ``str.rfind``), from memory (``score_texts``) and from Parquet, CSV and text files, through one
  process or the tokenizer pool, and the scoring stats count it (``ScoreStats.cut``).
* Token lists have 64-bit offsets (``large_list``) from tokenizing to ids, and a text file's long
  line is read a chunk at a time with the same result as the whole line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sentiflow.tasks.core.inference import Encoded, Scorer, score_texts, token_ids
from sentiflow.tasks.core.model import ModelParams, SentimentRNN
from sentiflow.tasks.core.rows import checked, decoded, status_of
from sentiflow.tasks.core.text import (
    CHARS_PER_TOKEN,
    MAX_REVIEW_CHARS,
    PAD,
    UNK,
    TokenizeParams,
    Vocab,
    char_budget,
    cut_text,
    tokenize_text,
    tokenize_texts,
)
from sentiflow.tasks.data import tokenize as tokenize_stage
from sentiflow.tasks.scoring import score_sources
from sentiflow.tasks.scoring.score import ScoreParams, score
from tests.conftest import capture_log

IMDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"
needs_imdb = pytest.mark.skipif(not (IMDB / "test.parquet").is_file(), reason="no shared IMDb copy")
SENTENCE = "the plot was great but the actors were boring and the film dreadful. "
WORDS = ["the", "plot", "was", "great", "but", "actors", "were", "boring", "and", "film", "dreadful", "."]


@pytest.fixture(scope="module")
def imdb_rows() -> list[str]:
    """The 400 longest IMDb test reviews and 400 others, every kind of markup among them."""
    texts = pq.read_table(IMDB / "test.parquet", columns=["text"]).column("text").to_pylist()
    order = np.argsort([len(t) for t in texts])
    rest = np.random.default_rng(0).choice(order[:-400], 400, replace=False)
    return [texts[i] for i in [*order[-400:], *rest]]


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    """An untrained network over the huge review's words: its outputs differ from text to text."""
    torch.manual_seed(3)
    vocab = Vocab([UNK, PAD, *WORDS])
    net = SentimentRNN(len(vocab), ModelParams(embed_dim=8, hidden_dim=8, bidirectional=False,
                                               head="last+max", dropout=0.0), pad_id=vocab.pad_id)
    return Scorer(net, vocab, TokenizeParams(), max_len=300)


def head_of(text: str, budget: int) -> str:
    """What the cut keeps of ``text``, found independently: up to its last space within the budget."""
    return text[:text.rfind(" ", 0, budget + 1)]


# -- the budget on ordinary reviews ---------------------------------------------------------------

@needs_imdb
def test_no_imdb_review_reaches_the_budget():
    for part in ("train", "test"):
        texts = pq.read_table(IMDB / f"{part}.parquet", columns=["text"]).column("text").to_pylist()
        assert max(len(t) for t in texts) * 7 < char_budget(1) == char_budget(None) == MAX_REVIEW_CHARS
        statuses, ok, cut = checked(texts, char_budget(1))
        assert cut == 0 and ok == texts


@needs_imdb
def test_a_budget_of_chars_per_token_keeps_the_first_max_len_tokens_of_imdb_reviews(imdb_rows):
    whole = tokenize_texts(imdb_rows, max_chars=10**12).to_pylist()
    for max_len in (10, 50, 200, 400):
        budget = CHARS_PER_TOKEN * max_len
        cut = tokenize_texts(imdb_rows, max_chars=budget).to_pylist()
        assert [c[:max_len] for c in cut] == [w[:max_len] for w in whole], max_len
        assert sum(len(t) > budget for t in imdb_rows) > 0  # the budget did cut
    assert tokenize_texts(imdb_rows).to_pylist() == whole  # the default budget cuts none


@needs_imdb
def test_a_cut_anywhere_gives_a_prefix_of_the_whole_reviews_tokens(imdb_rows):
    """Cut points drawn at random past the first word (within it, the cut falls mid-word), as
    well as inside and just after ``<br />`` tags."""
    rng = np.random.default_rng(1)
    texts, cuts = [], []
    for t in imdb_rows:
        points = list(rng.integers(t.find(" ") + 1, len(t), 3))
        tag = t.find("<br /")
        if tag > 0:
            points += [tag + 1, tag + 3, tag + 4, tag + 5, tag + 6]
        points = [p for p in points if p > t.find(" ")]  # where the cut can fall back to a space
        texts += [t] * len(points)
        cuts += [cut_text(t, int(p)) for p in points]
    assert all(len(c) <= len(t) for c, t in zip(cuts, texts))
    whole = tokenize_texts(list(dict.fromkeys(texts))).to_pylist()
    by_text = dict(zip(dict.fromkeys(texts), whole))
    for c, t, tokens in zip(cuts, texts, tokenize_texts(cuts).to_pylist()):
        assert tokens == by_text[t][:len(tokens)], (t[:80], c[-40:])
        assert tokens or not c.strip()


def test_cut_text_rules():
    assert cut_text("short review", 100) == "short review"
    assert cut_text("hello world again", 13) == "hello world"  # back to the last space
    assert cut_text("hello world again", 11) == "hello world"  # the cut falls on a space
    assert cut_text("good <br />film", 8) == "good "  # not "good <br": a tag cut in two
    assert cut_text("x" * 30, 10) == "x" * 10  # no space: cut where the budget ends
    assert cut_text(" " + "x" * 30, 10) == " " + "x" * 9  # only a space before it: the same
    text = "word " * 1000
    assert cut_text(text, 2002) == cut_text(text[:2003], 2002)  # only max_chars + 1 are looked at
    assert tokenize_text(text, max_chars=22) == ["word"] * 4


# -- a huge review --------------------------------------------------------------------------------

def test_a_huge_review_is_scored_as_its_first_budget_characters(scorer):
    huge = SENTENCE * (50_000_000 // len(SENTENCE))  # 50 MB
    head = head_of(huge, scorer.max_chars)
    assert scorer.max_chars == MAX_REVIEW_CHARS and len(head) < scorer.max_chars < len(huge)
    started = time.perf_counter()
    statuses, probs, oov = score_texts(scorer, [huge, "great film", huge + " awful"])
    seconds = time.perf_counter() - started
    want = score_texts(scorer, [head, "great film", head])
    assert statuses == want[0] == ["ok"] * 3
    np.testing.assert_array_equal(probs, want[1])
    np.testing.assert_array_equal(oov, want[2])
    assert seconds < 60  # spaCy never sees 50 MB (that takes minutes and gigabytes)
    flat, offsets = token_ids([huge], scorer.vocab, scorer.tokenize, scorer.max_chars)
    assert offsets[-1] == len(tokenize_text(head)) < 25_000  # ~14 tokens per 68-character sentence


def test_whitespace_within_the_budget_is_an_empty_review(scorer):
    statuses, probs, _ = score_texts(scorer, [" " * (MAX_REVIEW_CHARS + 5) + "great film"])
    assert statuses == ["empty"] and np.isnan(probs[0])


def _files_with_long_reviews(tmp_path: Path) -> tuple[list, dict[str, Path]]:
    """The same raw rows as Parquet (bytes), CSV (read as bytes: rows of at most 4 MB) and a
    text file with CRLF lines: long ones valid, not UTF-8 far past the budget, ending in a
    carriage return, led by whitespace, and short ones. Also as Parquet text, where the row that
    is not UTF-8 is null."""
    big = SENTENCE * (3_000_000 // len(SENTENCE))  # 3 MB: within a CSV block
    rows = [big, "great film", big.replace("great", "grеat"), "boring", big + "\r", " " * 1_200_000 + "film"]
    raw = [r.encode() for r in rows]
    raw.insert(3, big.encode()[:2_500_000] + b"\xff" + big.encode()[:100])
    files = {"parquet": tmp_path / "long.parquet", "csv": tmp_path / "long.csv", "txt": tmp_path / "long.txt",
             "parquet-text": tmp_path / "long-text.parquet"}
    pq.write_table(pa.table({"text": pa.array(raw, pa.binary())}), files["parquet"])
    files["csv"].write_bytes(b"text\n" + b"".join(b'"' + r.replace(b'"', b'""') + b'"\n' for r in raw))
    files["txt"].write_bytes(b"".join(r.replace(b"\r", b"") + b"\r\n" for r in raw))
    pq.write_table(pa.table({"text": pa.array([*rows[:3], None, *rows[3:]], pa.string())}), files["parquet-text"])
    return [decoded(r) for r in raw], files


@pytest.mark.parametrize("workers", [1, 2])
def test_long_reviews_in_files_score_as_in_memory_and_are_counted(scorer, tmp_path, workers):
    values, files = _files_with_long_reviews(tmp_path)
    want_status, want_probs, want_oov = score_texts(scorer, values)
    assert want_status == ["ok", "ok", "ok", "not_text", "ok", "ok", "empty"]
    ok = np.array([s == "ok" for s in want_status])
    for kind, path in files.items():
        out = tmp_path / f"out-{kind}-{workers}"
        out.mkdir()
        with capture_log("sentiflow.score") as records:
            stats = score(scorer, str(path), out, ScoreParams(), workers=workers, batch_rows=3)
        pred = pq.read_table(out / "predictions.parquet").to_pydict()
        assert pred["status"] == [s if kind != "parquet-text" or i != 3 else "null"
                                  for i, s in enumerate(want_status)], kind
        np.testing.assert_allclose(np.array(pred["prob_pos"], float)[ok], want_probs[ok], atol=1e-6)
        np.testing.assert_allclose(np.array(pred["oov_share"], float)[ok], want_oov[ok], atol=1e-6)
        assert stats.cut == 3  # the three long ok rows; not the short, not_text or empty ones
        saved = json.loads((out / "stats.json").read_text())
        assert saved["cut"] == 3 and saved["max_chars"] == MAX_REVIEW_CHARS
        assert any("3 reviews longer than 100000 characters" in r.getMessage() for r in records)


def test_a_long_csv_row_past_the_block_is_a_clear_error(scorer, tmp_path):
    """A CSV row much longer than the reader's 4 MB blocks is refused, naming the file (it is
    not read whole)."""
    src = tmp_path / "huge.csv"
    src.write_text('text\n"' + SENTENCE * (20_000_000 // len(SENTENCE)) + '"\n')
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(score_sources.SourceError, match="huge.csv"):
        score(scorer, str(src), out, ScoreParams(), workers=1)


def test_text_lines_read_in_chunks_match_the_whole_lines(tmp_path, monkeypatch):
    """With an 8-byte chunk, every line longer than a chunk goes through ``_long_line``: each
    keeps its first max_chars + 1 characters, line ends stripped, UTF-8 checked to the end."""
    lines = [b"short", b"", b"a\r", b"\r\r\r", b"0123456789abcdef\r\r", b"abcdefg\r\rhij\r",
             "жёлтый фильм 😀 ok".encode(), b"abcdefghijklmnopqrstuvwxyz" * 3, b"abcdefghijklmnop\xff",
             "жёлтый".encode()[:-1] + b"\rxxxxxxxxxxxxxxx", b"\r" * 40 + b"x", b"x" + b"\r" * 40]
    path = tmp_path / "lines.txt"
    path.write_bytes(b"\n".join(lines) + b"\n" + b"no newline at the end, and long")
    monkeypatch.setattr(score_sources, "LINE_CHUNK", 8)
    whole = [decoded(x.rstrip(b"\r\n")) for x in path.read_bytes().split(b"\n")]
    assert [status_of(w) for w in whole].count("not_text") == 2
    for max_chars in (3, 9, 20, 200):
        got = [t for b in score_sources._text_lines(path, 4, max_chars) for t in b.texts]
        assert checked(got, max_chars) == checked(whole, max_chars), max_chars  # statuses, texts, cut
        assert [g[:max_chars + 1] if isinstance(g, str) else None for g in got] == \
            [w[:max_chars + 1] if isinstance(w, str) else None for w in whole], max_chars
        assert all(len(g) <= max_chars + 1 for g in got if isinstance(g, str) and len(g) > 8)


def test_the_data_stage_tokenizes_a_shard_with_a_huge_review(tmp_path):
    huge = SENTENCE * (20_000_000 // len(SENTENCE))
    shard = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": [huge, "A good film."], "label": pa.array([1, 0], pa.int8())}),
                   shard)
    out = tmp_path / "out"
    out.mkdir()
    n = tokenize_stage.tokenize_shard(shard, out, TokenizeParams())
    tokens = pq.read_table(out / tokenize_stage.TOKENS)
    assert tokens.schema.field("tokens").type == pa.list_(pa.string())  # what encode reads
    head = head_of(huge, MAX_REVIEW_CHARS)
    assert tokens.column("tokens").to_pylist() == [tokenize_text(head), ["a", "good", "film", "."]]
    assert n == len(tokenize_text(head)) + 4


# -- 64-bit offsets -------------------------------------------------------------------------------

def test_token_lists_have_64_bit_offsets_from_tokens_to_ids(tmp_path):
    tokens = tokenize_texts(["A great film.", "", "Boring <br />film"])
    assert tokens.type == pa.large_list(pa.large_string()) and tokens.offsets.type == pa.int64()
    vocab = Vocab([UNK, PAD, "great", "film", "boring"])
    ids = vocab.encode(tokens)
    assert ids.type == pa.large_list(pa.int32())
    assert ids.to_pylist() == [[0, 2, 3, 0], [], [4, 3]]
    assert vocab.encode(tokens.cast(pa.list_(pa.string()))).type == pa.list_(pa.int32())  # as stored
    assert vocab.encode(pa.chunked_array([tokens.slice(0, 1), tokens.slice(1)])).to_pylist() == ids.to_pylist()
    flat, offsets = token_ids(["A great film.", "", "Boring <br />film"], vocab, TokenizeParams())
    assert offsets.dtype == np.int64 and offsets.tolist() == [0, 4, 4, 6]

    # a Parquet round trip keeps the type, and encoded rows read from it are the same
    pq.write_table(pa.table({"label": pa.array([1, 0, 1], pa.int8()), "ids": ids}), tmp_path / "ids.parquet")
    back = pq.read_table(tmp_path / "ids.parquet")
    assert back.schema.field("ids").type == pa.large_list(pa.int32())
    enc = Encoded.from_table(back, max_len=3)
    assert enc.offsets.tolist() == [0, 3, 3, 5] and enc.flat.tolist() == [0, 2, 3, 4, 3]


def test_a_parquet_row_group_of_huge_values_is_refused_before_it_is_read(scorer, tmp_path):
    """A Parquet value is decoded whole: a row group whose text averages far past the budget is
    refused from the file's footer, naming the file, row group, rows and column, before any row
    is scored. Long values among ordinary ones in smaller groups are read and cut."""
    huge = SENTENCE * ((80 << 20) // len(SENTENCE))  # 80 MB in one value
    src = tmp_path / "huge.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["great film", "boring", huge]}), src, row_group_size=2)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(score_sources.SourceError) as caught:
        score(scorer, str(src), out, ScoreParams(), workers=1)
    message = str(caught.value)
    assert str(src) in message and "row group 1 (rows 3 to 3), column 'text'" in message, message
    assert "text file" in message  # what to do instead
    # refused before any row was scored (the stage's folder, a temporary one, is then removed)
    assert pq.read_metadata(out / "predictions.parquet").num_rows == 0
    # the same rows without the huge one: read as before
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["great film", SENTENCE * 20_000]}), src)
    stats = score(scorer, str(src), out, ScoreParams(), workers=1)
    assert stats.rows == 2 and stats.cut == 1


def test_the_gate_reads_a_source_review_up_to_the_budget(scorer, tmp_path):
    """A gate source's long review reaches the models cut to the challenger's budget (+1, what
    the cut looks at), never whole, and is judged as ``score_texts`` judges it."""
    from sentiflow.tasks.release.gate import source_rows

    big = SENTENCE * (2 * MAX_REVIEW_CHARS // len(SENTENCE))
    src = tmp_path / "gate.parquet"
    pq.write_table(pa.table({"text": [big, "great film"], "label": [1, 0]}), src)
    (batch,) = list(source_rows(str(src), max_chars=scorer.max_chars).batches())
    assert [len(t) for t in batch.texts] == [scorer.max_chars + 1, len("great film")]
    np.testing.assert_allclose(scorer.predict_proba(batch.texts), score_texts(scorer, [big, "great film"])[1])


def test_the_flow_logs_and_reports_the_cut_rows():
    """The score flow's metrics carry ``rows_cut`` and its summary says how many were cut."""
    from sentiflow.flows.score_flow import run_metrics, summary
    from sentiflow.storage.settings import Settings
    from sentiflow.tasks.scoring.score import ScoreStats
    from sentiflow.tasks.scoring.serving import ModelRef

    stats = ScoreStats(rows=5, cut=2, max_chars=MAX_REVIEW_CHARS)
    assert run_metrics(stats)["rows_cut"] == 2
    model = ModelRef(requested="models:/m@champion", uri="models:/m/1", run_id="r", model_uuid="u")
    text = summary(model, stats, "/tmp/p.parquet", None, "Completed", Settings())
    assert "2 reviews longer than 100,000 characters" in text
    assert "longer than" not in summary(model, ScoreStats(rows=5), "/tmp/p.parquet", None, "Completed", Settings())


def test_dask_parts_cut_and_count_as_one_process(scorer, tmp_path):
    """The score stage's parts (``score_part``, what each Dask task runs) read long reviews up
    to the budget and their counts add up (``assemble``): the predictions and cut count of
    scoring in one process."""
    import torch

    from sentiflow.tasks.scoring.score_dask import ScorePart, ScoreWork, assemble, score_part

    _, files = _files_with_long_reviews(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    scorer.vocab.write(model / "vocab.parquet")
    torch.save(scorer.net.state_dict(), model / "weights.pt")
    (model / "config.json").write_text(json.dumps({"model": scorer.net.params.model_dump(),
                                                   "tokenize": scorer.tokenize.model_dump(), "max_len": 300}))
    one = tmp_path / "one"
    one.mkdir()
    score(scorer, str(files["parquet"]), one, ScoreParams(), workers=1, batch_rows=3)
    labeled, ranges = score_sources.plan_parts(str(files["parquet"]), "auto", part_rows=3)
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    common = {"folder": str(work_dir), "labeled": labeled,
              "model_files": {k: str(model / f) for k, f in
                              (("config", "config.json"), ("vocab", "vocab.parquet"), ("weights", "weights.pt"))}}
    parts = [ScorePart(index=i, source=r, **common) for i, r in enumerate(ranges)]
    for part in parts:
        score_part(part, ScoreParams(), batch_rows=2)
    out = tmp_path / "dask"
    out.mkdir()
    stats = assemble(ScoreWork(folder=str(work_dir), labeled=labeled, started=time.time(), parts=parts), out)
    want = json.loads((one / "stats.json").read_text())
    assert stats.cut == want["cut"] == 3 and stats.max_chars == want["max_chars"] == scorer.max_chars
    assert pq.read_table(out / "predictions.parquet").equals(pq.read_table(one / "predictions.parquet"))

"""Know when not to trust it (issue 12, item 5): each scored review's share of tokens outside the
model's vocabulary (``oov_share``), ``--max-oov`` (status ``out_of_domain``), the training split's
statistics stored with the registered model (``train_stats.json``), and the drift of a run's
reviews from them (metrics on the evaluation run, a warning in the summary and the CLI).

One tiny model is trained and registered for the module with the real train flow (real Prefect,
real MLflow on a temporary SQLite store), its vocabulary cut at ``min_freq`` 2 so that training
tokens fall outside it too. Expected values come from another path: spaCy's tokenizer called
here, and the vocabulary read by hand from the registered model's files."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import spacy
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from sentiflow.tasks.scoring import drift
from tests.conftest import make_reviews, read_artifacts, write_imdb_folder

CHAMPION = "models:/sentiflow@champion"
BR = ("<br />", "<br/>", "<br>")


@dataclass
class Trained:
    root: Path
    src: Path
    uri: str
    files: dict[str, Path]  # the registered model's artifacts, downloaded: config, vocab, weights, train_stats


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness) -> Trained:
    from sentiflow.flows.data_flow import DataConfig
    from sentiflow.flows.train_flow import TrainFlowConfig, train_flow
    from sentiflow.tasks.core.model import ModelParams
    from sentiflow.tasks.data.vocab import VocabParams
    from sentiflow.tasks.training.train import TrainParams

    base = tmp_path_factory.mktemp("drift")
    src = write_imdb_folder(base / "src", n_train=240, n_test=40, seed=21)
    config = TrainFlowConfig(data=DataConfig(source=str(src), vocab=VocabParams(min_freq=2)),
                             model=ModelParams(embed_dim=8, hidden_dim=8, dropout=0.0, bidirectional=False,
                                               head="last+max"),
                             train=TrainParams(max_epochs=1, batch_size=32, lr=2e-2, pretrained=None,
                                               lr_schedule="constant", average=None))
    outcome = train_flow(config=config, data_root=str(base / "data"), workers=1)
    mlflow.set_tracking_uri(outcome.tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(CHAMPION, dst_path=str(base / "model")))
    artifacts = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]["artifacts"]
    files = {k: local / v["path"] for k, v in artifacts.items()}
    return Trained(base / "data", src, outcome.tracking_uri, files)


# -- the independent path: spaCy's tokenizer, the vocabulary read by hand -------------------------

_nlp = spacy.blank("en")


def tokens_of(text: str) -> list[str]:
    for tag in BR:
        text = text.replace(tag, " ")
    return [t.lower_ for t in _nlp(text) if not t.is_space]


def vocabulary(trained: Trained) -> set[str]:
    return set(pq.read_table(trained.files["vocab"], columns=["token"]).column("token").to_pylist())


def expected_oov(texts: list[str], vocab: set[str]) -> list[float | None]:
    out = []
    for text in texts:
        toks = tokens_of(text)
        out.append(sum(t not in vocab for t in toks) / len(toks) if toks else None)
    return out


def random_words(n: int, seed: int, like: list[str] | None = None) -> list[str]:
    """Reviews of made-up words that no vocabulary here holds; with ``like``, as many tokens as
    each of those reviews (the same lengths, only the words change)."""
    rng = random.Random(seed)
    word = lambda: "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(5, 9)))  # noqa: E731
    sizes = [len(tokens_of(t)) for t in like] if like else [rng.randint(8, 30) for _ in range(n)]
    return [" ".join(word() for _ in range(k)) for k in sizes]


def write_texts(path: Path, texts: list, labels: list[int] | None = None) -> Path:
    cols = {"id": [f"x{i}" for i in range(len(texts))], "text": pa.array(texts, pa.string())}
    if labels is not None:
        cols["label"] = pa.array(labels, pa.int8())
    pq.write_table(pa.table(cols), path)
    return path


def score(trained: Trained, source: Path, **params):
    from sentiflow.flows.score_flow import ScoreConfig, score_flow
    from sentiflow.tasks.scoring.score import ScoreParams

    return score_flow(config=ScoreConfig(model=CHAMPION, source=str(source), params=ScoreParams(**params)),
                      data_root=str(trained.root), workers=1)


# -- the training split's statistics --------------------------------------------------------------

def test_train_stats_stored_with_the_model_match_the_training_split(trained):
    """``train_stats.json`` against the proper-train reviews (the split stage's files), tokenized
    and looked up here."""
    stats = drift.TrainStats.read(trained.files["train_stats"])
    vocab = vocabulary(trained)
    texts = [t for f in sorted((trained.root / "split").glob("*/train-*.parquet"))
             for t in pq.read_table(f, columns=["text"]).column("text").to_pylist()]
    toks = [tokens_of(t) for t in texts]
    lengths = np.array([len(t) for t in toks], np.float64)
    unk = np.array([sum(w not in vocab for w in t) for t in toks], np.float64)
    share = unk / lengths

    assert 150 < stats.profile.rows == len(texts) < 240  # the proper-train part, not validation
    assert stats.profile.tokens == lengths.sum() and stats.profile.oov_tokens == unk.sum() > 0
    assert stats.oov_token_share == pytest.approx(unk.sum() / lengths.sum(), abs=1e-12)
    assert stats.length.mean == pytest.approx(lengths.mean(), abs=1e-9)
    assert stats.oov.mean == pytest.approx(share.mean(), abs=1e-9)
    for q, v in stats.length.quantiles.items():
        assert v == pytest.approx(np.quantile(lengths, float(q)), abs=1e-9), q
    for q, v in stats.oov.quantiles.items():
        assert v == pytest.approx(np.quantile(share, float(q)), abs=1e-9), q
    assert stats.profile.length_hist == np.histogram(lengths, drift.LENGTH_EDGES)[0].tolist()
    assert sum(stats.profile.oov_hist) == len(texts)


def test_profiles_of_parts_add_up_to_the_whole():
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 3000, 500)
    unk = (lengths * rng.random(500)).astype(np.int64)
    whole = drift.Profile.of(lengths, unk)
    assert drift.Profile.merged([drift.Profile.of(lengths[:123], unk[:123]),
                                 drift.Profile.of(lengths[123:], unk[123:])]) == whole
    assert whole.rows == int((lengths > 0).sum())


# -- per row: oov_share, --max-oov ----------------------------------------------------------------

def test_oov_share_per_row_matches_an_independent_count(trained, tmp_path):
    vocab = vocabulary(trained)
    texts = [*make_reviews(12, seed=4).column("text").to_pylist(), "Great plot zzqx qqvw <br />film",
             "   ", None, "<br /><br />", "wibblewobble flimflam", "A Great FILM, the actors."]
    out = score(trained, write_texts(tmp_path / "mixed.parquet", texts))
    pred = pq.read_table(out.predictions).to_pydict()
    expected = [expected_oov([t], vocab)[0] if isinstance(t, str) and t.strip() else None for t in texts]
    assert [p is None for p in pred["oov_share"]] == [e is None for e in expected]
    np.testing.assert_allclose([p for p in pred["oov_share"] if p is not None],
                               [e for e in expected if e is not None], atol=1e-7)
    assert pred["oov_share"][texts.index("wibblewobble flimflam")] == 1.0
    assert pred["status"][texts.index("<br /><br />")] == "ok"  # no token: scored, no OOV share


def test_max_oov_marks_rows_out_of_domain(trained, tmp_path):
    """``sentiflow score --max-oov 0.5``: rows above it get out_of_domain and no probability; the
    others keep the probability an unrestricted run gives them; the count is printed."""
    from sentiflow.flows.cli import app

    vocab = vocabulary(trained)
    texts = [*make_reviews(10, seed=6).column("text").to_pylist(), *random_words(4, seed=1),
             "great film zzqx qqvw wibble"]  # 3 of 5 unknown: 0.6
    src = write_texts(tmp_path / "some-foreign.parquet", texts, [i % 2 for i in range(len(texts))])
    oov = expected_oov(texts, vocab)
    far = [o > 0.5 for o in oov]
    assert sum(far) == 5

    runner = CliRunner()
    out = tmp_path / "preds.parquet"
    env = {"SENTIFLOW_DATA_ROOT": str(trained.root), "MLFLOW_TRACKING_URI": trained.uri}
    result = runner.invoke(app, ["score", "--source", str(src), "--out", str(out), "--max-oov", "0.5"], env=env)
    assert result.exit_code == 0, result.output
    assert "out_of_domain 5" in result.output
    pred = pq.read_table(out).to_pydict()
    assert pred["status"] == ["out_of_domain" if f else "ok" for f in far]
    assert [p is None for p in pred["prob_pos"]] == [p is None for p in pred["pred"]] == far
    np.testing.assert_allclose(pred["oov_share"], oov, atol=1e-7)  # known for every tokenized row

    everything = pq.read_table(score(trained, src).predictions).to_pydict()
    np.testing.assert_allclose([p for p, f in zip(pred["prob_pos"], far) if not f],
                               [p for p, f in zip(everything["prob_pos"], far) if not f], atol=1e-6)
    bad = runner.invoke(app, ["score", "--source", str(src), "--max-oov", "1.5"], env=env)
    assert bad.exit_code != 0

    got = runner.invoke(app, ["predict", "--model", CHAMPION, "--json", "--max-oov", "0.5", texts[0], texts[-1]],
                        env=env)
    assert got.exit_code == 0, got.output
    rows = [json.loads(line) for line in got.output.splitlines() if line.startswith("{")]
    assert [r["status"] for r in rows] == ["ok", "out_of_domain"] and rows[1]["prob_pos"] is None
    assert [r["oov_share"] for r in rows] == pytest.approx([oov[0], oov[-1]], abs=1e-7)


# -- per run: drift -------------------------------------------------------------------------------

def _independent_means(texts: list[str], vocab: set[str]) -> tuple[float, float]:
    toks = [tokens_of(t) for t in texts if tokens_of(t)]
    return (float(np.mean([len(t) for t in toks])),
            float(np.mean([sum(w not in vocab for w in t) / len(t) for t in toks])))


@pytest.mark.parametrize("kind", ["like-training", "unknown-words", "long"])
def test_drifted_input_warns_and_logs_the_metric(trained, tmp_path, kind):
    from sentiflow.flows.cli import app

    like = make_reviews(250, seed=77).column("text").to_pylist()
    texts = {"like-training": like, "unknown-words": random_words(250, seed=2, like=like),
             "long": [" ".join([t] * 40) for t in like]}[kind]
    src = write_texts(tmp_path / f"{kind}.txt.parquet", texts)
    outcome = score(trained, src)
    stats = drift.TrainStats.read(trained.files["train_stats"])
    d = outcome.stats.drift
    assert d is not None and d.rows == 250 >= drift.MIN_ROWS
    metrics = MlflowClient(trained.uri).get_run(outcome.evaluation_run_id).data.metrics  # no labels: drift alone
    assert "accuracy" not in metrics
    for k in ("drift_length_psi", "drift_length_ks", "drift_oov_psi", "drift_oov_ks",
              "drift_length_median_diff", "drift_oov_mean_diff"):
        assert metrics[k] == pytest.approx(d.metrics[k]), k
    length_mean, oov_mean = _independent_means(texts, vocabulary(trained))
    assert metrics["drift_length_mean_diff"] == pytest.approx(length_mean - stats.length.mean, abs=1e-6)
    assert metrics["drift_oov_mean_diff"] == pytest.approx(oov_mean - stats.oov.mean, abs=1e-6)
    summary = next(a.data for a in read_artifacts("scoring-summary") if outcome.predictions in a.data)

    drifted = {"like-training": set(), "unknown-words": {"oov"}, "long": {"length"}}[kind]
    for f in ("length", "oov"):
        assert (metrics[f"drift_{f}_psi"] >= drift.PSI_WARN) == (f in drifted), (f, metrics)
    assert metrics["drift_warning"] == float(bool(drifted))
    assert ("**WARNING**" in summary) == bool(drifted)
    if kind == "like-training":
        assert "No drift past the thresholds" in summary
    result = CliRunner().invoke(app, ["score", "--source", str(src)],
                                env={"SENTIFLOW_DATA_ROOT": str(trained.root), "MLFLOW_TRACKING_URI": trained.uri})
    assert result.exit_code == 0, result.output
    assert ("warning:" in result.output) == bool(drifted)
    assert "drift against the training split: length PSI" in result.output


def test_model_without_train_stats_still_scores_with_a_note(trained, tmp_path):
    """A model logged before drift checks (no ``train_stats`` artifact): scored, no comparison."""
    from sentiflow.flows.score_flow import ScoreConfig, score_flow
    from sentiflow.storage.settings import Settings
    from sentiflow.storage.tracking import configure
    from sentiflow.tasks.core.inference import Scorer
    from sentiflow.tasks.scoring.score import NO_TRAIN_STATS
    from sentiflow.tasks.scoring.serving import log_model

    configure(Settings(data_root=trained.root))
    f = trained.files
    scorer = Scorer.from_files(f["config"], f["vocab"], f["weights"])
    (tmp_path / "m").mkdir()
    with mlflow.start_run():
        info = log_model(scorer, f["vocab"], {}, tmp_path / "m")  # as before: no train_stats
    src = write_texts(tmp_path / "few.parquet", make_reviews(20, seed=8).column("text").to_pylist(), [0, 1] * 10)
    out = score_flow(config=ScoreConfig(model=info.model_uri, source=str(src)), data_root=str(trained.root),
                     workers=1)
    pred = pq.read_table(out.predictions).to_pydict()
    assert pred["status"] == ["ok"] * 20 and None not in pred["prob_pos"] and None not in pred["oov_share"]
    assert out.stats.drift is None and out.stats.drift_note == NO_TRAIN_STATS
    metrics = MlflowClient(trained.uri).get_run(out.evaluation_run_id).data.metrics
    assert "accuracy" in metrics and not any(k.startswith("drift_") for k in metrics)
    summary = next(a.data for a in read_artifacts("scoring-summary") if out.predictions in a.data)
    assert f"Not measured: {NO_TRAIN_STATS}" in summary

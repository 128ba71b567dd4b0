"""The data flow: ingest → split → tokenize (train, val, test) → vocab → encode (train, val, test).

The flow only wires tasks; each task returns a ``StageRef`` and is served from Prefect's cache
(state "Cached") when its stage folder is present and valid. The source's fingerprint (ingest's
key) is a plain call, not a task: a task would run, and show as Completed, on every run.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow
from pydantic import BaseModel, Field

from storage.settings import get_settings
from storage.store import StageRef
from tasks.encode import encode_task
from tasks.ingest import ingest_task
from tasks.sources import fingerprint
from tasks.split import SplitParams, split_task
from tasks.tokenize import TokenizeParams, tokenize_task
from tasks.vocab import VocabParams, vocab_task

Stage = Literal["ingest", "split", "tokenize", "vocab", "encode"]
STAGES: tuple[str, ...] = ("ingest", "split", "tokenize", "vocab", "encode")
PARTS = ("train", "val", "test")


class DataConfig(BaseModel):
    """Everything the data stages depend on (shown as a form in the Prefect UI)."""

    source: str = Field(default_factory=lambda: get_settings().source,
                        description="Hugging Face dataset id, or a local Parquet/CSV/aclImdb path")
    split: SplitParams = SplitParams()
    tokenize: TokenizeParams = TokenizeParams()
    vocab: VocabParams = VocabParams()


class PreparedData(BaseModel):
    ingest: StageRef
    split: StageRef
    tokens: dict[str, StageRef]
    vocab: StageRef
    encoded: dict[str, StageRef]
    states: dict[str, str] = Field(description="task run name → final state name (Cached, Completed)")

    def refs(self) -> dict[str, StageRef]:
        """Each task run's stage folder, by the task run names used in ``states``."""
        return {"ingest": self.ingest, "split": self.split, "vocab": self.vocab,
                **{f"tokenize-{k}": v for k, v in self.tokens.items()},
                **{f"encode-{k}": v for k, v in self.encoded.items()}}


@flow(name="prepare-data", log_prints=True)
def prepare_data(
    config: DataConfig = DataConfig(),
    data_root: str | None = None,
    force: list[Stage] = [],  # noqa: B006 - Prefect shows it as a list form
    workers: int = 0,
) -> PreparedData:
    settings = get_settings()
    root = str(data_root or settings.data_root)
    workers = workers or settings.resolved_workers
    states: dict[str, str] = {}

    def call(name: str, task_fn, **kwargs) -> StageRef:
        state = task_fn(**kwargs, root=root, force=name.split("-")[0] in force, return_state=True)
        states[name] = state.name
        return state.result()

    fp = fingerprint(config.source)
    ingested = call("ingest", ingest_task, source=config.source, source_fingerprint=fp)
    split = call("split", split_task, params=config.split, ingested=ingested)
    sources = {"train": split, "val": split, "test": ingested}
    tokens = {
        part: call(f"tokenize-{part}", tokenize_task, params=config.tokenize,
                   source=sources[part], part=part, workers=workers)
        for part in PARTS
    }
    vocab = call("vocab", vocab_task, params=config.vocab, tokens=tokens["train"])
    encoded = {
        part: call(f"encode-{part}", encode_task, tokens=tokens[part], vocab=vocab, part=part)
        for part in PARTS
    }
    return PreparedData(ingest=ingested, split=split, tokens=tokens, vocab=vocab,
                        encoded=encoded, states=states)

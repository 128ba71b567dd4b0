"""The data flow's form and result, without Prefect: ``DataConfig`` (what the data stages depend
on), ``PreparedData`` (each task run's stage folder and state) and ``Stage`` (a stage's name, as
``force`` takes it). ``sentiflow status`` plans with these and never imports Prefect."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from sentiflow.storage.settings import FromSetting
from sentiflow.storage.store import StageRef
from sentiflow.tasks.config import Config
from sentiflow.tasks.data import dag
from sentiflow.tasks.data.dag import STAGES
from sentiflow.tasks.data.ingest import IngestParams
from sentiflow.tasks.data.split import SplitParams
from sentiflow.tasks.data.tokenize import TokenizeParams
from sentiflow.tasks.data.vocab import VocabParams

# The order and the wiring of the stages are written once, in sentiflow.tasks.data.dag (dag.DAG);
# STAGES, RUNS and PARTS come from there. A stage's name, as ``force`` takes it (a list form in
# Prefect's UI):
Stage = Literal[STAGES]  # type: ignore[valid-type]


class DataConfig(Config):
    """Everything the data stages depend on (shown as a form in the Prefect UI)."""

    source: Annotated[str | None, FromSetting("source")] = Field(
        None, description="Hugging Face dataset id, or a local Parquet/CSV/aclImdb path; empty: the "
                          "settings' source (SENTIFLOW_SOURCE, default stanfordnlp/imdb)")
    ingest: IngestParams = IngestParams()
    split: SplitParams = SplitParams()
    tokenize: TokenizeParams = TokenizeParams()
    vocab: VocabParams = VocabParams()


class PreparedData(BaseModel):
    """The data flow's result: each task run's stage folder and final state, by run name
    (``RUNS``: ``ingest``, ``tokenize-train``, ...), and its shard tasks' states counted. The
    properties name the folders the training flow reads."""

    folders: dict[str, StageRef] = Field(description="task run name → its stage folder")
    states: dict[str, str] = Field(description="task run name → final state name (Cached, Completed)")
    shards: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="per-part run name (tokenize-train, ...) → its shard tasks' "
                                          "final states, counted (Cached: reused, Completed: computed)")

    # the folders as the flows read them: a stage's (StageRef), or a per-shard stage's by part
    ingest = property(lambda self: self.folders["ingest"])
    split = property(lambda self: self.folders["split"])
    vocab = property(lambda self: self.folders["vocab"])
    tokens = property(lambda self: self.parts("tokenize"))
    encoded = property(lambda self: self.parts("encode"))

    def parts(self, stage: str) -> dict[str, StageRef]:
        """A per-shard stage's gathered folders, by part (``train``, ``val``, ``test``)."""
        return {part: self.folders[run] for run, part in dag.BY_STAGE[stage].runs.items()}

    def refs(self) -> dict[str, StageRef]:
        """Each task run's stage folder, by the task run names used in ``states`` (``RUNS``)."""
        return dict(self.folders)

    @classmethod
    def from_refs(cls, refs: dict[str, StageRef], states: dict[str, str],
                  shards: dict[str, dict[str, int]] | None = None) -> PreparedData:
        """The inverse of ``refs``: task run name → stage folder, for every run in ``RUNS``."""
        return cls(folders={run: refs[run] for run in dag.RUNS}, states=states, shards=shards or {})

    def lineage(self, config: DataConfig) -> dict[str, str]:
        """What a training run logs of its data: the source, the parameters of the stages that
        log them (``split.seed``, ...) and the keys of their runs (``key.ingest``,
        ``key.encode_train``, ...), as the data DAG's steps say."""
        out = {"data.source": config.source}
        for step in dag.DAG:
            if step.params and step.log_params:
                params = getattr(config, step.stage).model_dump(mode="json")
                out.update({f"{step.stage}.{name}": value for name, value in params.items()})
        for step in dag.DAG:
            if step.log_key:
                out.update({f"key.{run.replace('-', '_')}": self.folders[run].key
                            for run in step.runs})
        return out

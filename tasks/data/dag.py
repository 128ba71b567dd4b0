"""The data DAG, written once: ``DAG`` lists the data stages in the order they run, each a ``Step``
naming its stage module, the runs it reads and, for a stage that runs once per shard, where each
part's shards come from. Whatever needs the order or the wiring walks this list: the data flow
submits it (``sentiflow.flows.data_flow.prepare``), ``sentiflow status`` plans its keys without
running anything (``sentiflow.flows.status``); the stage names (``--force``), the task runs, the
``stages`` table and a training run's lineage params derive from it. Adding a stage is one entry
(and, when it takes parameters, its section of ``DataConfig``, named as the stage).

A stage module holds ``STAGE`` (its folders' name) and its Prefect task ``<STAGE>_task``,
whose ``.planner`` maps the task's arguments to its folder (the task's cache key, and what
``status`` plans; ``sentiflow.tasks.stage.stage_task``); a per-shard one also ``SHARD_STAGE`` (one shard's folders) and ``GATHERED`` (the files a
part's folder links). A whole stage is one task run, named as the stage (``split``). A per-shard
stage is one task a shard (``tokenize-train-3``), then one gathering each part
(``tokenize-train``; ``sentiflow.tasks.data.shards``): its runs are its parts'.

A run reads other runs by name: a whole stage (``ingest``), a part (``tokenize-train``), or
``SOURCE`` and ``FINGERPRINT``, the data source and its content hash (what ingest reads). A
per-shard stage maps each shard of a part: the ``<part>-NNNNN.parquet`` files of a whole stage's
folder (tokenize: the split's train and val, ingest's test), or another per-shard stage's shard
outputs of the same part (encode maps tokenize's, one to one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Mapping

from sentiflow.storage.store import StageRef
from sentiflow.tasks.data import encode, ingest, shards, split, tokenize, vocab
from sentiflow.tasks.data.reviews import fingerprint

SOURCE, FINGERPRINT = "source", "source-fingerprint"


@dataclass(frozen=True)
class Step:
    """One data stage as the walks read it; see the module docstring."""

    module: ModuleType
    # the task's argument → the run it reads
    inputs: Mapping[str, str] = field(default_factory=dict)
    # per-shard: part → the stage whose shards it maps, one task each; empty: one task, no parts
    shards_from: Mapping[str, str] = field(default_factory=dict)
    shard_arg: str = "shard"  # the task's argument that takes one shard
    params: bool = True  # takes its section of DataConfig (``config.<stage>``) as ``params``
    log_params: bool = True  # a training run logs its params (``<stage>.<name>``)...
    log_key: bool = True  # ...and the key of each of its runs (``key.<run>``, ``-`` as ``_``)

    @property
    def stage(self) -> str:
        return self.module.STAGE

    @property
    def per_shard(self) -> bool:
        return bool(self.shards_from)

    @property
    def runs(self) -> dict[str, str]:
        """Its task runs (each gives a folder) → the part each makes ("" for a whole stage)."""
        if not self.per_shard:
            return {self.stage: ""}
        return {f"{self.stage}-{part}": part for part in self.shards_from}

    @property
    def task(self) -> Any:
        """The Prefect task: of the stage, or of one shard."""
        return getattr(self.module, f"{self.stage}_task")

    def plan(self, arguments: dict[str, Any]) -> StageRef:
        """The folder the task makes of these arguments (``root`` among them); nothing runs."""
        return self.task.planner(arguments)

    def arguments(self, config: Any, outputs: Mapping[str, Any]) -> dict[str, Any]:
        """The task's arguments (``root``, ``force``, a shard's ``part`` and ``index`` aside):
        ``params`` from ``config`` and its inputs from ``outputs`` (run → folder, or future)."""
        args = {arg: outputs[run] for arg, run in self.inputs.items()}
        if self.params:
            args["params"] = getattr(config, self.stage)
        return args

    def shard_source(self, part: str) -> tuple[str, bool]:
        """The run whose shards ``part`` maps, and whether they are that run's shard outputs
        (another per-shard stage's part) rather than files of its folder."""
        source = self.shards_from[part]
        if BY_STAGE[source].per_shard:
            return f"{source}-{part}", True
        return source, False

    def part_shards(self, part: str, outputs: Mapping[str, Any],
                    shard_outputs: Mapping[str, list[Any]],
                    folder: Callable[[Any], StageRef] = lambda ref: ref) -> tuple[list[Any], Any, str]:
        """``part``'s shards (``shards.Shard``s of a folder, or another stage's shard outputs),
        and what they came from: the gathered part's ``source`` and ``source_part``.
        ``folder`` turns an output into its folder (a future's result)."""
        run, mapped = self.shard_source(part)
        if mapped:
            return shard_outputs[run], outputs[run], ""
        ref = folder(outputs[run])
        return shards.shards_of(ref, part), ref, part

    def gather_arguments(self, part: str, shard_outputs: list[Any], source: Any,
                         source_part: str) -> dict[str, Any]:
        """``shards.gather_task``'s arguments for ``part`` (``root`` and ``force`` aside)."""
        return {"stage_name": self.stage, "part": part, "shards": shard_outputs,
                "files": self.module.GATHERED, "source": source, "source_part": source_part}


# The data DAG, in the order the stages run: each reads only what comes before it.
DAG: tuple[Step, ...] = (
    Step(ingest, inputs={"source": SOURCE, "source_fingerprint": FINGERPRINT},
         log_params=False),  # shard_rows: how the reviews are cut, not which
    Step(split, inputs={"ingested": "ingest"}),
    Step(tokenize, shards_from={"train": "split", "val": "split", "test": "ingest"},
         log_key=False),  # encode's keys name it
    Step(vocab, inputs={"tokens": "tokenize-train"}),
    Step(encode, inputs={"vocab": "vocab"},
         shards_from={"train": "tokenize", "val": "tokenize", "test": "tokenize"},
         shard_arg="tokens", params=False),
)
BY_STAGE = {step.stage: step for step in DAG}
STAGES: tuple[str, ...] = tuple(BY_STAGE)
RUNS: tuple[str, ...] = tuple(run for step in DAG for run in step.runs)
PARTS: tuple[str, ...] = tuple(dict.fromkeys(part for step in DAG for part in step.shards_from))
# a per-shard stage → the stage of its shards' own folders (tokenize → tokenize-shard)
SHARD_STAGES = {step.stage: step.module.SHARD_STAGE for step in DAG if step.per_shard}
gather_task = shards.gather_task
plan_gather = shards.gather_task.planner  # gather_task's arguments → its folder


def seeds(source: str) -> dict[str, str]:
    """What the first runs read: the source and its fingerprint (a plain call, not a task: a task
    would run, and show as Completed, on every run)."""
    return {SOURCE: source, FINGERPRINT: fingerprint(source)}


def check(dag: tuple[Step, ...]) -> None:
    """A ``ValueError`` unless each step reads only the seeds and the runs of the steps before it
    (so a walk in this order never waits on a run it has not started)."""
    made = {SOURCE, FINGERPRINT}
    per_shard = {step.stage for step in dag if step.per_shard}
    for step in dag:
        reads = [*step.inputs.values(),
                 *(f"{s}-{p}" if s in per_shard else s for p, s in step.shards_from.items())]
        for run in reads:
            if run not in made:
                raise ValueError(f"data DAG: {step.stage} reads {run!r}, not made before it")
        made.update(step.runs)


check(DAG)

"""One settings object: environment variables prefixed ``SENTIFLOW_``, defaults that need no server.

Settings are built once, where a run starts, and passed down as an argument from there: a CLI
command builds them from its options and the environment (``Settings.load``); a flow run that no
caller gave settings to (a deployment's run on a worker) builds them from the environment when it
starts (``sentiflow.flows.runs``). Nothing reads them from a global, and nothing writes
``os.environ`` to pass one on. A flow's configuration leaves the sources empty unless given; the
flow fills them from its settings when it starts, in one place (``Settings.fill``, the fields
marked ``FromSetting``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sentiflow.storage.names import ExperimentName

DEFAULT_SOURCE = "stanfordnlp/imdb"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


M = TypeVar("M", bound=BaseModel)


class PathNotAllowed(ValueError):
    """A path parameter outside the configured roots."""


@dataclass(frozen=True)
class FromSetting:
    """Marks a configuration field that, left empty, takes the setting ``name`` when a flow
    starts (``Settings.fill``): ``source: Annotated[str | None, FromSetting("source")] = None``.
    The form's default stays empty: nothing is read from the environment when a model is made."""

    name: str


class Settings(BaseSettings):
    """Where things live. Every field reads ``SENTIFLOW_<FIELD>``; the tracking URI also reads
    the standard ``MLFLOW_TRACKING_URI``."""

    model_config = SettingsConfigDict(env_prefix="SENTIFLOW_", extra="ignore", populate_by_name=True)

    data_root: Path = Field(Path("data"), description="Stage store root: <data_root>/<stage>/<key>/")
    source: str = Field(DEFAULT_SOURCE, description="Hugging Face dataset id or local path")
    gate_source: str | None = Field(
        None, description="A fixed labelled source the champion gate judges challenger and champion "
                          "on; unset: each new run's test split (tasks/release/gate.py)")
    tracking_uri: str | None = Field(
        None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "SENTIFLOW_TRACKING_URI"),
        description="MLflow tracking URI; default: a SQLite file under the data root",
    )
    experiment: ExperimentName = Field("sentiflow", description="MLflow experiment name")
    workers: int = Field(0, ge=0, description="Processes for tokenization; 0 = all cores")
    task_runner: Literal["local", "dask"] = Field(
        "local",
        description="Where the per-shard tokenize and encode tasks and the scoring parts run: 'local' "
                    "in this process (its own tokenizer pool), 'dask' one Dask task each, through "
                    "prefect-dask (sentiflow.flows.data_flow, sentiflow.flows.score_flow)",
    )
    dask_address: str | None = Field(
        None,
        description="With task_runner 'dask': an existing scheduler, e.g. tcp://host:8786; "
                    "unset: a temporary LocalCluster of `workers` single-threaded processes. "
                    "Its workers must see the data root at the same path",
    )

    sweep_storage: str | None = Field(
        None, description="Where sweeps keep their Optuna studies (an SQLAlchemy URL: sqlite:///… or "
                          "postgresql+psycopg://…), so a killed sweep continues; default: a SQLite "
                          "file under the data root (<data_root>/sweeps.db)")

    path_roots: list[Path] = Field(
        default_factory=list,
        description="Folders (JSON list) that the path parameters of a deployment's flow run - a "
                    "source, a gate source, an --out - must lie in, besides the data root: a run "
                    "created through the Prefect API reads and writes nothing else")

    def confine(self, path: str | None, what: str, dataset: bool = False) -> None:
        """Refuse ``path`` (a flow run's parameter ``what``) unless it lies in the data root or a
        ``path_roots`` folder, links resolved. ``dataset``: the parameter may name a Hugging Face
        dataset id instead (a relative name with no such file), which is not a path."""
        if not path:
            return
        p = Path(path).expanduser()
        if dataset and not p.is_absolute() and not p.exists() and _HUB_ID.match(path):
            return
        target = p.resolve()
        roots = [r.expanduser().resolve() for r in (self.data_root, *self.path_roots)]
        if not any(target == r or target.is_relative_to(r) for r in roots):
            raise PathNotAllowed(f"{what} {path!r} is outside the folders a deployment's run may use "
                                 f"({', '.join(map(str, roots))}; add one with SENTIFLOW_PATH_ROOTS)")

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """The settings from the environment, with ``overrides`` over it: an entry point's
        options (a CLI command's ``--data-root``, ``--source``, ``--workers``). ``None`` is an
        option not given. A source neither given nor set is the one the data root was last built
        from (``record_source``), else the default: after ``make train``, ``sentiflow status`` and
        ``sentiflow score`` look at what it trained on."""
        settings = cls(**_given(overrides))
        if "source" not in settings.model_fields_set:  # neither an option nor SENTIFLOW_SOURCE
            recorded = recorded_source(settings.data_root)
            if recorded:
                settings = settings.model_copy(update={"source": recorded})
        return settings

    def updated(self, **overrides: Any) -> Settings:
        """These settings with ``overrides`` over them (``None``: not given), validated; the
        environment is not read again."""
        given = _given(overrides)
        return type(self).model_validate({**self.model_dump(), **given}) if given else self

    def fill(self, config: M) -> M:
        """``config`` with each empty field marked ``FromSetting`` set to that setting, at every
        depth (the data source, the scoring source, the gate source): the one place a flow's
        configuration takes its defaults from the settings, once, where the flow starts."""
        update: dict[str, Any] = {}
        for name, info in type(config).model_fields.items():
            value = getattr(config, name)
            setting = next((getattr(self, m.name) for m in info.metadata if isinstance(m, FromSetting)), None)
            if value is None and setting is not None:
                update[name] = setting
            elif isinstance(value, BaseModel):
                filled = self.fill(value)
                if filled is not value:
                    update[name] = filled
        return config.model_copy(update=update) if update else config

    @property
    def resolved_sweep_storage(self) -> str:
        if self.sweep_storage:
            return self.sweep_storage
        return f"sqlite:///{(self.data_root / 'sweeps.db').resolve()}"

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(self.data_root / 'mlflow.db').resolve()}"

    @property
    def resolved_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


def _given(overrides: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in overrides.items() if v is not None}


SOURCE_RECORD = "source.json"  # under the data root: the source its data stages were last built from


def record_source(data_root: Path | str, source: str) -> None:
    """Remember ``source`` as the one ``data_root`` was last built from: a local path made
    absolute (a command may start elsewhere), a hub id as it is. Written whole or not at all."""
    import json
    import uuid

    local = Path(source).expanduser()
    value = str(local.resolve()) if local.exists() else source
    root = Path(data_root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{SOURCE_RECORD}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.write_text(json.dumps({"source": value}) + "\n")
        os.replace(tmp, root / SOURCE_RECORD)
    finally:
        tmp.unlink(missing_ok=True)


def recorded_source(data_root: Path | str) -> str | None:
    """The source ``data_root`` was last built from, or None (none recorded, or unreadable)."""
    import json

    try:
        value = json.loads((Path(data_root) / SOURCE_RECORD).read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None

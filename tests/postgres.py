"""A real PostgreSQL for the server tests: a temporary cluster on loopback, no system service.

``initdb`` into a temporary folder, ``pg_ctl start`` on 127.0.0.1 and a free port (its unix socket
in that folder too), one database per name asked for, password authentication over TCP as in
docker-compose.yml; stopped and removed at the end. PostgreSQL refuses to run as root (CI runs as
root): then the cluster belongs to, and runs as, the ``postgres`` user that Debian's package
creates. The binaries: ``pg_config --bindir``, else Debian's ``/usr/lib/postgresql/*/bin``, else
``PATH``. ``make postgres-tool`` installs Debian's ``postgresql`` where apt-get can.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None where PostgreSQL is not installed."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        r = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        if r.returncode == 0 and r.stdout.strip():
            candidates.append(Path(r.stdout.strip()))

    def version(p: str) -> tuple[int, ...]:
        name = Path(p).parts[-3]
        return tuple(int(x) for x in name.split(".") if x.isdigit())

    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version,
                                                  reverse=True)]
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Cluster:
    host: str
    port: int
    user: str
    password: str
    folder: Path  # the data directory's parent: socket, log

    def url(self, database: str, driver: str = "") -> str:
        """``postgresql[+driver]://user:password@127.0.0.1:port/database``."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"


def _as_owner(cmd: list[str], owner: str | None) -> list[str]:
    """``cmd`` run as ``owner`` (root only), else as is."""
    if owner is None:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", owner, "--", *cmd]
    import shlex

    return ["su", owner, "-s", "/bin/sh", "-c", shlex.join(cmd)]


def _owner() -> str | None:
    """The unprivileged user to run PostgreSQL as when this process is root, else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no 'postgres' (or 'nobody') user to run PostgreSQL as")


@contextmanager
def postgres_cluster(databases: tuple[str, ...] = (), timeout: float = 120) -> Iterator[Cluster]:
    """A running temporary cluster with ``databases`` created; stopped and removed afterwards.
    Raises ``FileNotFoundError`` where PostgreSQL is not installed."""
    bin_ = bindir()
    if bin_ is None:
        raise FileNotFoundError("PostgreSQL is not installed (no initdb/pg_ctl: pg_config --bindir, "
                                "/usr/lib/postgresql/*/bin, PATH); `make postgres-tool` installs it")
    owner = _owner()
    # not under pytest's tmp folders: those are private to this user, and the server may run as another
    folder = Path(tempfile.mkdtemp(prefix="sentiflow-pg-"))
    data = folder / "data"
    user, password = "sentiflow", secrets.token_hex(12)
    (folder / "pwfile").write_text(password + "\n")
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        os.chown(folder / "pwfile", entry.pw_uid, entry.pw_gid)
    cluster = Cluster("127.0.0.1", _free_port(), user, password, folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"LC_ALL": "C", "LANG": "C"})

    def run(cmd: list[str], as_owner: bool = True, **kwargs) -> None:
        full = _as_owner(cmd, owner if as_owner else None)
        r = subprocess.run(full, env=env, cwd=folder, capture_output=True, text=True, timeout=timeout,
                           check=False, **kwargs)
        if r.returncode != 0:
            log = cluster.log.read_text()[-3000:] if cluster.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}\n{log}")

    started = False
    try:
        run([str(bin_ / "initdb"), "-D", str(data), "-U", user, f"--pwfile={folder / 'pwfile'}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"])
        # a throwaway cluster: durability off (fsync, full pages) for speed
        options = (f"-k {folder} -h {cluster.host} -p {cluster.port} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        started = True
        run([str(bin_ / "pg_ctl"), "start", "-D", str(data), "-w", "-t", str(int(timeout)), "-l", str(cluster.log),
             "-o", options])
        client_env = {"PGPASSWORD": password}
        for name in databases:
            r = subprocess.run([str(bin_ / "createdb"), "-h", cluster.host, "-p", str(cluster.port), "-U", user, name],
                               env={**env, **client_env}, capture_output=True, text=True, timeout=timeout,
                               check=False)
            if r.returncode != 0:
                raise RuntimeError(f"createdb {name} failed: {r.stderr[-2000:]}")
        yield cluster
    finally:
        if started:
            for mode in ("fast", "immediate"):
                r = subprocess.run(_as_owner([str(bin_ / "pg_ctl"), "stop", "-D", str(data), "-m", mode, "-w",
                                              "-t", "30"], owner),
                                   env=env, cwd=folder, capture_output=True, text=True, check=False)
                if r.returncode == 0 or not (data / "postmaster.pid").exists():
                    break
        shutil.rmtree(folder, ignore_errors=True)

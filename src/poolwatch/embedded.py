"""A throwaway PostgreSQL cluster on loopback, for the test suite and the demo.

It runs the PostgreSQL binaries found on the machine or, failing that, those bundled in
the ``pgserver`` wheel. ``initdb`` and ``postgres`` refuse to run as root, so under root
the server runs as the ``postgres`` system user (created if missing).
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPERUSER = "poolwatch"


class ClusterError(RuntimeError):
    """The cluster could not be created, started or stopped."""


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looked up in order: ``$POOLWATCH_PG_BINDIR``, ``pg_config --bindir``, the newest
    ``/usr/lib/postgresql/*/bin``, ``initdb`` on ``$PATH``, the ``pgserver`` wheel.
    """
    candidates: list[Path] = []
    if env := os.environ.get("POOLWATCH_PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    candidates.extend(Path(p) for p in debian)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    # Locate pgserver's bundled install without importing it (its import has side effects).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(Path(location) / "pginstall" / "bin")
    for bindir in candidates:
        if all((bindir / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise ClusterError(
        "no PostgreSQL binaries found: install the Debian package 'postgresql' or the"
        " 'pgserver' wheel (pip install 'poolwatch[demo]'), or set POOLWATCH_PG_BINDIR"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _server_user() -> pwd.struct_passwd | None:
    """The account to run the server as: None if we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "poolwatch-pg"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "poolwatch-pg"],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam("poolwatch-pg")


def _reachable_by(user: pwd.struct_passwd, path: Path) -> bool:
    """Whether *user* can traverse every directory down to *path* (read-only check)."""
    for part in [path, *path.parents]:
        st = part.stat()
        if st.st_uid == user.pw_uid:
            continue
        bit = 0o010 if st.st_gid == user.pw_gid else 0o001
        if not st.st_mode & bit:
            return False
    return True


def _owned_and_sealed(top: Path) -> bool:
    """Whether *top* and everything below it belong to us and nobody else can write there.

    Symbolic links are checked, not followed: they were copied as they are and
    point inside the tree.
    """
    me = os.geteuid()
    paths = [str(top)]
    for root, dirs, files in os.walk(top):
        paths += [os.path.join(root, name) for name in dirs + files]
    for path in paths:
        st = os.lstat(path)
        if st.st_uid != me or (not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022):
            return False
    return True


def _bindir_for(user: pwd.struct_passwd | None, bindir: Path) -> Path:
    """*bindir*, or a world-readable copy of its install if the server user cannot reach it.

    The copy is shared between runs under a fixed name in the temporary directory,
    but only if it is ours and sealed (see `_owned_and_sealed`); otherwise a private
    copy is made, so that another local user cannot plant the binaries we run.

    A virtual environment under a private home directory (``/root``) holds pgserver's
    binaries where the ``postgres`` user may not go.
    """
    if user is None or _reachable_by(user, bindir):
        return bindir
    # Keep the layout the binaries' RPATH expects: pgserver's point from
    # pgserver/pginstall/bin to ../../../pgserver.libs.
    install = bindir.parent
    package = install.parent
    parts = {f"{package.name}/{install.name}": install}
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        parts[libs.name] = libs
    tag = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    shared = Path(tempfile.gettempdir()) / f"poolwatch-pginstall-{tag}"
    relative_bindir = Path(package.name) / install.name / "bin"
    if (shared / relative_bindir / "postgres").exists() and _owned_and_sealed(shared):
        return shared / relative_bindir
    staging = Path(tempfile.mkdtemp(prefix="poolwatch-pginstall-"))  # 0700, ours alone
    for relative, source in parts.items():
        shutil.copytree(source, staging / "tree" / relative, symlinks=True)
    for root, dirs, files in os.walk(staging):
        for name in dirs + files:
            target = os.path.join(root, name)
            if not os.path.islink(target):
                # readable and runnable by the server user, writable by us only
                os.chmod(target, (os.stat(target).st_mode | 0o555) & ~0o022)
    os.chmod(staging, 0o755)
    if not os.path.lexists(shared):
        try:
            (staging / "tree").rename(shared)
        except OSError:  # someone else got there first: keep our private copy
            pass
        else:
            shutil.rmtree(staging, ignore_errors=True)
            if _owned_and_sealed(shared):
                return shared / relative_bindir
            raise ClusterError(f"{shared} changed hands while it was being created")
    # The shared name is taken by a copy we cannot trust (another user's, or writable
    # by others): run from our private one instead, never from theirs.
    return staging / "tree" / relative_bindir


@dataclass
class Cluster:
    """A running cluster: TCP on 127.0.0.1, password authentication for TCP clients."""

    bindir: Path
    basedir: Path
    port: int
    password: str
    user: pwd.struct_passwd | None
    max_connections: int

    @property
    def datadir(self) -> Path:
        return self.basedir / "data"

    @property
    def logfile(self) -> Path:
        return self.basedir / "server.log"

    def dsn(self, **extra: Any) -> str:
        """A libpq connection string for the superuser, with its password.

        *extra* overrides or adds parameters; a None value removes one.
        """
        params: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": SUPERUSER,
            "password": self.password,
            "dbname": "postgres",
        }
        params.update(extra)
        return " ".join(f"{k}={v}" for k, v in params.items() if v is not None)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        proc = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.basedir,
            **kwargs,
        )
        if check and proc.returncode != 0:
            output = proc.stderr.strip() or proc.stdout.strip()
            raise ClusterError(f"{args[0]} failed ({proc.returncode}): {output}")
        return proc

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop", check=False
        )

    def restart(self, mode: str = "fast") -> None:
        # -l matters: without it the new postmaster inherits our output pipes and
        # subprocess.run() would wait for their end forever.
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-m", mode, "-w", "restart"
        )

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.datadir), "status", check=False).returncode == 0

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run *sql* as the superuser on a fresh autocommit connection."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            cur = conn.execute(sql.encode(), params)
            return cur.fetchall() if cur.description else []

    def terminate_backends(self, application_name: str | None = None) -> int:
        """``pg_terminate_backend`` every client backend (of *application_name*, if given)."""
        sql = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        params: tuple[Any, ...] = ()
        if application_name is not None:
            sql += " AND application_name = %s"
            params = (application_name,)
        n: int = self.execute(sql, params)[0][0]
        return n

    def backends(self, application_name: str) -> int:
        """How many client backends *application_name* has open now."""
        rows = self.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        )
        n: int = rows[0][0]
        return n

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.basedir, ignore_errors=True)


def create_cluster(*, max_connections: int = 40, basedir: Path | None = None) -> Cluster:
    """initdb a new cluster in a temporary directory and start it on a free port."""
    user = _server_user()
    bindir = _bindir_for(user, find_bindir())
    base = Path(tempfile.mkdtemp(prefix="poolwatch-pg-", dir=basedir))
    os.chmod(base, 0o700)
    password = "pw-" + secrets.token_hex(12)
    cluster = Cluster(bindir, base, free_port(), password, user, max_connections)
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    cluster._run(
        "initdb",
        "-D",
        str(cluster.datadir),
        "-U",
        SUPERUSER,
        f"--pwfile={pwfile}",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-E",
        "UTF8",
        "--no-sync",
    )
    pwfile.unlink()
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(cluster.port),
        "unix_socket_directories": f"'{base}'",
        "max_connections": str(max_connections),
        "superuser_reserved_connections": "3",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "shared_buffers": "32MB",
        "log_min_messages": "warning",
    }
    with open(cluster.datadir / "postgresql.conf", "a") as conf:
        conf.write("\n# poolwatch test cluster\n")
        conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
    cluster.start()
    return cluster

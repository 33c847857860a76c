"""poolwatch.embedded never runs binaries from a directory someone else could have planted.

Under root the server runs as an unprivileged user who cannot read a venv under /root,
so the PostgreSQL install is copied to /tmp/poolwatch-pginstall-<hash>. A copy found
there is reused only if it is ours and nobody else can write to it.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from poolwatch.embedded import _bindir_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the copy is made only under root")

GENUINE = "#!/bin/sh\necho genuine\n"
PLANTED = "#!/bin/sh\necho planted\n"


@pytest.fixture
def install(tmp_path: Path):
    """A pgserver-like install where the unprivileged server user cannot reach it."""
    private = tmp_path / "private"
    bindir = private / "pkg" / "pginstall" / "bin"
    bindir.mkdir(parents=True)
    for tool in ("initdb", "pg_ctl", "postgres"):
        (bindir / tool).write_text(GENUINE)
        (bindir / tool).chmod(0o755)
    private.chmod(0o700)
    tag = hashlib.sha256(str(bindir.parent).encode()).hexdigest()[:12]
    shared = Path(tempfile.gettempdir()) / f"poolwatch-pginstall-{tag}"
    made: list[Path] = [shared]
    yield bindir, shared, made
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def plant(shared: Path, *, owner: int, mode: int) -> None:
    bindir = shared / "pkg" / "pginstall" / "bin"
    bindir.mkdir(parents=True)
    for tool in ("initdb", "pg_ctl", "postgres"):
        (bindir / tool).write_text(PLANTED)
    for root, dirs, files in os.walk(shared):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), owner, owner)
    os.chown(shared, owner, owner)
    shared.chmod(mode)


def assert_private_genuine(bindir: Path, shared: Path) -> None:
    assert (bindir / "postgres").read_text() == GENUINE
    top = bindir.parents[2]
    for path in [top, *top.rglob("*")]:
        st = path.lstat()
        assert st.st_uid == os.geteuid(), path
        assert not stat.S_IMODE(st.st_mode) & 0o022, (path, oct(st.st_mode))


def copy_root(bindir: Path) -> Path:
    """The directory holding a private copy, to remove after the test."""
    root = bindir.parents[3]
    assert root.name.startswith("poolwatch-pginstall-"), root
    return root


def server_user() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def test_a_copy_planted_by_another_user_is_not_used(install):
    bindir, shared, made = install
    nobody = server_user()
    plant(shared, owner=nobody.pw_uid, mode=0o755)
    used = _bindir_for(nobody, bindir)
    made.append(copy_root(used))
    assert shared not in used.parents
    assert_private_genuine(used, shared)


def test_a_world_writable_copy_is_not_used(install):
    bindir, shared, made = install
    plant(shared, owner=0, mode=0o777)
    used = _bindir_for(server_user(), bindir)
    made.append(copy_root(used))
    assert shared not in used.parents
    assert_private_genuine(used, shared)


def test_a_writable_file_inside_our_copy_spoils_it(install):
    bindir, shared, made = install
    first = _bindir_for(server_user(), bindir)
    assert first.parents[2] == shared  # the shared copy is made and ours
    assert_private_genuine(first, shared)
    assert _bindir_for(server_user(), bindir) == first  # and reused while it is clean
    (first / "postgres").chmod(0o777)
    used = _bindir_for(server_user(), bindir)
    made.append(copy_root(used))
    assert shared not in used.parents
    assert_private_genuine(used, shared)

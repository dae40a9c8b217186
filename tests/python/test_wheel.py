"""The Python package as a user gets it: the wheel that `make wheel` built,
installed with pip into a fresh venv of Debian's python, loaded into sqlite3
with `lsync.load`, and used to move a changeset between two databases.

`make test` builds the wheel first; LSYNC_WHEELS names the folder it is in
(default target/wheels).
"""

import json
import os
import re
import subprocess
import zipfile

import pytest

from util import REPO

WHEELS = os.environ.get("LSYNC_WHEELS") or str(REPO / "target" / "wheels")
# Debian's python: its sqlite3 module can load extensions.
BASE_PYTHON = "/usr/bin/python3"
TIMEOUT = 120
# The libraries a manylinux wheel may link without shipping them (PEP 600's
# policy, as auditwheel lists it), of those a Rust cdylib can need.
MANYLINUX_LIBS = {
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "librt.so.1",
    "libpthread.so.0",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
}

# Run by the venv's python: two databases of one library, each opened by its
# own connection with the installed package; a tag inserted through the
# first reaches the second as a changeset. Prints what it saw as JSON.
USER_SCRIPT = r"""
import importlib.metadata, json, sqlite3, sys
import lsync

SCHEMA = '''
CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT, color TEXT);
SELECT lsync_track('tags', 'shared');
'''
a = sqlite3.connect(sys.argv[1], isolation_level=None)
b = sqlite3.connect(sys.argv[2], isolation_level=None)
for con in (a, b):
    lsync.load(con)
    con.executescript(SCHEMA)
library = a.execute("SELECT lsync_library_id()").fetchone()[0]
b.execute("SELECT lsync_library_id(?)", (library,))

a.execute("INSERT INTO tags(name, color) VALUES ('holiday', 'red')")
blob = a.execute("SELECT lsync_changeset(0)").fetchone()[0]
report = json.loads(b.execute("SELECT lsync_apply(?)", (blob,)).fetchone()[0])

try:
    a.execute("SELECT load_extension(?)", (lsync.loadable_path(),))
    loading_after_load = "allowed"
except sqlite3.OperationalError as e:
    loading_after_load = str(e)

rows = "SELECT uuid, name, color FROM tags ORDER BY uuid"
print(json.dumps({
    "module": lsync.__file__,
    "loadable_path": lsync.loadable_path(),
    "package_version": importlib.metadata.version("lsync"),
    "dunder_version": lsync.__version__,
    "extension_version": a.execute("SELECT lsync_version()").fetchone()[0],
    "report": report,
    "a": a.execute(rows).fetchall(),
    "b": b.execute(rows).fetchall(),
    "loading_after_load": loading_after_load,
}))
"""


def run(args, **kw):
    """Run a command to completion within TIMEOUT; fail with its output."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, **kw)
    assert done.returncode == 0, f"{args}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel_file():
    found = sorted(p for p in os.listdir(WHEELS) if p.endswith(".whl")) if os.path.isdir(WHEELS) else []
    if len(found) != 1:
        pytest.fail(f"expected one wheel in {WHEELS}, found {found} (run `make wheel`)")
    return os.path.join(WHEELS, found[0])


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory, wheel_file):
    """The python of a fresh venv with the wheel installed, from the file
    alone (no index)."""
    venv = tmp_path_factory.mktemp("venv")
    run([BASE_PYTHON, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", wheel_file])
    return python


def test_installed_wheel_loads_and_applies_a_changeset(venv_python, tmp_path):
    # -I: the package comes from the venv, never from the repository's python/.
    out = run(
        [venv_python, "-I", "-c", USER_SCRIPT, str(tmp_path / "a.db"), str(tmp_path / "b.db")],
        cwd=tmp_path,
    )
    seen = json.loads(out)

    venv = os.path.dirname(os.path.dirname(venv_python))
    assert seen["module"].startswith(venv + os.sep), seen["module"]
    assert seen["loadable_path"] == os.path.join(os.path.dirname(seen["module"]), "liblsync")
    assert os.path.isfile(seen["loadable_path"] + ".so")
    # The package and the extension it carries are one release.
    assert seen["package_version"] == seen["dunder_version"] == seen["extension_version"]

    assert len(seen["a"]) == 1 and seen["a"][0][1:] == ["holiday", "red"]
    assert seen["b"] == seen["a"], seen["report"]
    # load() leaves extension loading off, as SQLite's default has it.
    assert "not authorized" in seen["loading_after_load"]


def glibc_needed(so_path):
    """The newest GLIBC_2.N symbol version the library needs, as N."""
    versions = re.findall(r"\bGLIBC_2\.(\d+)", run(["objdump", "-T", so_path]))
    return max(int(v) for v in versions)


def libraries_needed(so_path):
    return set(re.findall(r"NEEDED\s+(\S+)", run(["objdump", "-p", so_path])))


def test_wheel_tag_is_honest_about_the_so(wheel_file, tmp_path):
    with zipfile.ZipFile(wheel_file) as whl:
        so = whl.extract("lsync/liblsync.so", tmp_path)
        meta = next(n for n in whl.namelist() if n.endswith(".dist-info/WHEEL"))
        wheel_meta = whl.read(meta).decode()

    tag = re.fullmatch(r"lsync-[^-]+-(.+)\.whl", os.path.basename(wheel_file)).group(1)
    m = re.fullmatch(r"py3-none-manylinux_2_(\d+)_x86_64", tag)
    assert m, f"not a py3-none manylinux x86-64 wheel: {tag}"
    assert f"Tag: {tag}" in wheel_meta
    assert "Root-Is-Purelib: false" in wheel_meta

    # A manylinux_2_N wheel promises to load with glibc 2.N: the .so may need
    # no newer symbol version, and only libraries every such system has.
    assert glibc_needed(so) <= int(m.group(1)), f"{tag} but the .so needs GLIBC_2.{glibc_needed(so)}"
    assert libraries_needed(so) <= MANYLINUX_LIBS, libraries_needed(so)

"""The set-up script on a fresh machine and across clones.

* its clean-up and export steps, run against an empty and a populated scratch cache (the first
  run on a machine with no older environment died here once, silently, under pipefail);
* the Makefile stops on a set-up failure with the set-up's own error;
* two clones sharing the one cached venv each import their own code, one after the other and
  at once;
* ``VLA_FULL=1``: the whole set-up into a fresh, empty cache directory, then ``vla --help``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup_env.sh"
FULL = os.environ.get("VLA_FULL") == "1"


def run_functions(script: str, cache: Path, venv: Path) -> subprocess.CompletedProcess:
    """Source the set-up with VLA_SETUP_FUNCTIONS_ONLY=1 (defines its functions, installs
    nothing) under the script's own `set -euo pipefail`, then run ``script``."""
    prologue = (
        f'VLA_SETUP_FUNCTIONS_ONLY=1 source "{SETUP}"; CACHE_DIR="{cache}"; VENV="{venv}"; '
        f'OPENPI="{cache}/openpi-client-venv"; LINT="{cache}/lint-venv"; LVP_DIR="{cache}/lavapipe"; '
    )
    return subprocess.run(["bash", "-c", prologue + script], capture_output=True, text=True, timeout=60)


def test_clean_up_on_an_empty_cache_keeps_going(tmp_path):
    """No other environment: grep selects nothing (exit 1); the script must carry on."""
    venv = tmp_path / "venv-new"
    venv.mkdir()
    result = run_functions('remove_stale_environments; echo "still running"', tmp_path, venv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "still running"
    assert venv.is_dir()


def test_clean_up_keeps_the_current_and_the_most_recent_other_environment(tmp_path):
    names = ["venv-oldest", "venv-older", "venv-recent", "venv-current"]
    for age, name in enumerate(names):
        (tmp_path / name).mkdir()
        stamp = time.time() - 1000 * (len(names) - age)
        os.utime(tmp_path / name, (stamp, stamp))
    os.utime(tmp_path / "venv-oldest", (time.time(), time.time()))  # the current one is not always the newest
    (tmp_path / "lavapipe").mkdir()
    result = run_functions("remove_stale_environments", tmp_path, tmp_path / "venv-older")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lavapipe", "venv-older", "venv-oldest"]
    assert "removing stale environment" in result.stderr


def test_exports_put_this_clone_first_and_evaluate_cleanly(tmp_path):
    venv = tmp_path / "venv-abc"
    result = run_functions(
        'PYTHONPATH=/elsewhere; eval "$(print_exports)"; '
        'echo "$PYTHONPATH"; echo "$VIRTUAL_ENV"; echo "${PATH%%:*}"; echo "$OMP_WAIT_POLICY"; echo "$HF_HUB_OFFLINE"',
        tmp_path,
        venv,
    )
    assert result.returncode == 0, result.stderr
    pythonpath, virtual_env, first_path, wait_policy, offline = result.stdout.split("\n")[:5]
    assert pythonpath == f"{REPO}:/elsewhere"
    assert virtual_env == str(venv) and first_path == f"{venv}/bin"
    assert wait_policy == "PASSIVE" and offline == "1"


def test_make_stops_with_the_setup_error(tmp_path):
    """A failing set-up stops `make` at once with its own message, not a later 'vla: not found'."""
    fake = tmp_path / "repo"
    (fake / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "Makefile", fake / "Makefile")
    (fake / "scripts" / "setup_env.sh").write_text(
        'echo "[setup] ERROR: no Python 3.12 here" >&2; echo "export X=1"; exit 3\n'
    )
    (fake / "scripts" / "build_ros2_ws.sh").write_text('echo "[ros2_ws] should not run" >&2\n')
    result = subprocess.run(["make", "-C", str(fake), "setup"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "[setup] ERROR: no Python 3.12 here" in result.stderr
    assert "should not run" not in result.stderr and "command not found" not in result.stderr


def _clone(tmp_path: Path, name: str, marker: str) -> Path:
    clone = tmp_path / name
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=120)
    # work-tree files, not only committed ones: the test must see today's set-up script
    for rel in ("scripts/setup_env.sh", "Makefile"):
        shutil.copy(REPO / rel, clone / rel)
    (clone / "vla" / "_clone_marker.py").write_text(f"MARKER = {marker!r}\n")
    return clone


def _imports_from(clone: Path) -> subprocess.Popen:
    script = (
        f'set -e; cd "{clone}"; out="$(bash scripts/setup_env.sh)"; eval "$out"; cd /; '
        'python -c "import vla, vla._clone_marker as m; print(vla.__file__); print(m.MARKER)"; '
        'vla --help >/dev/null && echo "vla ok"'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.skipif(not os.environ.get("VIRTUAL_ENV"), reason="needs the set-up's cached environment")
def test_two_clones_share_the_venv_and_each_imports_its_own_code(tmp_path):
    a, b = _clone(tmp_path, "a", "clone a"), _clone(tmp_path, "b", "clone b")

    def check(proc: subprocess.Popen, clone: Path, marker: str) -> None:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        lines = out.strip().split("\n")
        assert Path(lines[0]).resolve() == (clone / "vla" / "__init__.py").resolve(), lines
        assert lines[1:] == [marker, "vla ok"]

    for clone, marker in ((a, "clone a"), (b, "clone b"), (a, "clone a")):  # one after the other
        check(_imports_from(clone), clone, marker)
    procs = [(_imports_from(a), a, "clone a"), (_imports_from(b), b, "clone b")]  # at once
    for proc, clone, marker in procs:
        check(proc, clone, marker)


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="VLA_FULL=1: builds the whole environment (~8 GB) into an empty cache")
def test_full_setup_into_an_empty_cache(tmp_path):
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "VLA_VENV")}
    env["VLA_CACHE_DIR"] = str(cache)
    script = (
        f'set -e; cd "{REPO}"; out="$(bash scripts/setup_env.sh)"; eval "$out"; '
        'ros="$(bash scripts/build_ros2_ws.sh)"; eval "$ros"; cd /; vla --help; '
        "python -c \"import hypothesis; print('test tools', hypothesis.__version__)\""
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=3600)
    assert result.returncode == 0, result.stderr[-5000:]
    assert "usage: vla" in result.stdout and "test tools 6." in result.stdout
    assert len(list(cache.glob("venv-*/.complete"))) == 1
    sys.stdout.write(result.stderr[-2000:])

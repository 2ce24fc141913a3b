#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian/Ubuntu machine:
#   1. Debian packages the simulators and cameras need (libvulkan1, libusb, ffmpeg, EGL);
#   2. Mesa >= 25 lavapipe (a CPU Vulkan driver) for ManiSkill/SAPIEN on machines without a
#      GPU, unpacked from Debian's backports suite into the cache, /etc untouched;
#   3. a Python 3.12 virtual environment outside the clone, keyed by a hash of the dependency
#      pins in pyproject.toml, so every clone (and every CI run) reuses it;
#   4. the `vla` console script (this checkout's code is chosen by PYTHONPATH, not the venv);
#   5. a small robosuite 1.5 venv beside it for the RoboMimic tasks robosuite 1.4 lacks.
# Prints `export ...` lines to stdout for `eval`; all progress goes to stderr.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${VLA_CACHE_DIR:-$HOME/.cache/vla-stack}"
log() { echo "[setup] $*" >&2; }

# ---------------------------------------------------------------- functions (tested alone)
# Each environment is ~8 GB: keep $VENV and the most recent other one, drop older ones. With
# no other environment grep selects nothing and exits 1; under pipefail that must not end the
# script (it did, on every first run, right after the environment was built).
remove_stale_environments() {
    { ls -dt "$CACHE_DIR"/venv-* 2>/dev/null | grep -vx "$VENV" || true; } | tail -n +2 |
        while read -r old; do
            log "removing stale environment $old"
            rm -rf "$old"
        done
}

# The `export ...` lines callers eval: this checkout first on PYTHONPATH, the venv's bin on PATH,
# rendering and Vulkan settings, offline hubs.
print_exports() {
    echo "export VIRTUAL_ENV='$VENV'"
    echo "export VLA_REPO_ROOT='$REPO_ROOT'"
    echo "export PYTHONPATH='$REPO_ROOT'\${PYTHONPATH:+:\$PYTHONPATH}"
    echo "export PATH='$VENV/bin':\"\$PATH\""
    echo "export AMENT_PREFIX_PATH='$VENV'"
    echo "export MUJOCO_GL=\${MUJOCO_GL:-egl}"
    echo "export PYOPENGL_PLATFORM=\${PYOPENGL_PLATFORM:-egl}"
    echo "export HF_HUB_OFFLINE=\${HF_HUB_OFFLINE:-1}"
    # Idle OpenMP workers sleep instead of spinning, so two torch processes on one machine slow
    # down in proportion instead of collapsing (vla/threads.py; measured by vla bench threads).
    echo "export OMP_WAIT_POLICY=\${OMP_WAIT_POLICY:-PASSIVE}"
    echo "export VLA_OPENPI_CLIENT_PYTHON='$OPENPI/bin/python'"
    echo "export VLA_LINT_BIN='$LINT/bin'"
    if [ -f "$LVP_DIR/lvp_icd.json" ]; then
        libdir="$(dirname "$(find "$LVP_DIR" -name 'libvulkan_lvp.so' | head -n1)")"
        echo "export VK_ICD_FILENAMES='$LVP_DIR/lvp_icd.json'"
        echo "export LD_LIBRARY_PATH='$libdir':\"\${LD_LIBRARY_PATH:-}\""
    fi
}

# A small side venv at $1 holding the space-separated pins $2, rebuilt only when the pins change.
small_venv() {
    local dir="$1" pins="$2" what="$3" list
    if [ "$(cat "$dir/.pins" 2>/dev/null)" != "$pins" ]; then
        log "building the $what environment in $dir"
        rm -rf "$dir"
        PYENV_VERSION=3.12.1 "$PY312" -m venv "$dir"
        read -r -a list <<<"$pins"
        "$dir/bin/pip" install -q --progress-bar off "${list[@]}" >&2
        echo "$pins" >"$dir/.pins"
    fi
}

# tests/test_setup.py sources this file with VLA_SETUP_FUNCTIONS_ONLY=1 to run the functions
# above against a scratch cache directory, without installing anything.
if [ "${VLA_SETUP_FUNCTIONS_ONLY:-0}" = 1 ]; then return 0 2>/dev/null || exit 0; fi

mkdir -p "$CACHE_DIR"
# One set-up at a time per cache (parallel CI jobs, test helpers): the others wait, then find
# everything built. The lock is released when this script exits.
exec 9>"$CACHE_DIR/.setup.lock"
flock 9

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# ---------------------------------------------------------------- 1. Debian packages
DEB_PACKAGES=(libvulkan1 libusb-1.0-0 ffmpeg libegl1 libgl1 libglib2.0-0 libosmesa6 xz-utils)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null; then
        log "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        log "WARNING: no apt-get; install these yourself: ${missing[*]}"
    fi
fi

# ---------------------------------------------------------------- 2. lavapipe (CPU Vulkan)
# SAPIEN needs a Vulkan device even for state observations. Debian 12's lavapipe (Mesa 22)
# lacks VK_KHR_external_semaphore_fd; the Mesa 25 build from bookworm-backports works. We
# fetch it with a private apt configuration (the archive URI is read from this machine's own
# apt sources) and unpack it with dpkg -x; nothing under /etc changes.
LVP_DIR="$CACHE_DIR/lavapipe"
setup_lavapipe() {
    local codename uri work
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    if [ "$codename" != "bookworm" ]; then
        log "not Debian bookworm ($codename): using the system Vulkan driver"
        return 0
    fi
    uri="$(grep -hoE '^(URIs:|deb) *[a-z]+://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -oE '[a-z]+://[^ ]+' | head -n1 || true)"
    if [ -z "$uri" ]; then
        log "WARNING: no Debian archive in the apt sources; ManiSkill may not find a Vulkan device"
        return 0
    fi
    work="$(mktemp -d)"
    mkdir -p "$work/lists/partial" "$work/archives/partial"
    cat >"$work/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bookworm-backports main
EOF
    local aptopts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=-"
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
        -o "APT::Get::List-Cleanup=0")
    log "fetching Mesa lavapipe from bookworm-backports"
    apt-get "${aptopts[@]}" -o APT::Sandbox::User=root update -qq >&2
    # Mesa's lavapipe links LLVM statically; libdrm2 is the only newer library it needs.
    (cd "$work" && apt-get "${aptopts[@]}" -o APT::Sandbox::User=root download \
        mesa-vulkan-drivers/bookworm-backports libdrm2/bookworm-backports >&2)
    rm -rf "$LVP_DIR.tmp" && mkdir -p "$LVP_DIR.tmp"
    for deb in "$work"/*.deb; do dpkg -x "$deb" "$LVP_DIR.tmp"; done
    local so icd
    so="$(find "$LVP_DIR.tmp" -name 'libvulkan_lvp.so' | head -n1)"
    icd="$(find "$LVP_DIR.tmp" -name 'lvp_icd*.json' | head -n1)"
    [ -n "$so" ] && [ -n "$icd" ] || { log "ERROR: lavapipe not found in the downloaded packages"; exit 1; }
    so="${so/$LVP_DIR.tmp/$LVP_DIR}"
    python3 - "$icd" "$so" <<'EOF'
import json, sys
path, lib = sys.argv[1], sys.argv[2]
d = json.load(open(path))
d["ICD"]["library_path"] = lib
json.dump(d, open(path, "w"), indent=2)
EOF
    cp "$icd" "$LVP_DIR.tmp/lvp_icd.json"
    sed -i "s#$LVP_DIR.tmp#$LVP_DIR#g" "$LVP_DIR.tmp/lvp_icd.json"
    rm -rf "$LVP_DIR" && mv "$LVP_DIR.tmp" "$LVP_DIR"
    rm -rf "$work"
}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    log "NVIDIA GPU present: using its Vulkan driver"
elif [ ! -f "$LVP_DIR/lvp_icd.json" ]; then
    setup_lavapipe
fi

# ---------------------------------------------------------------- 3. Python venv
find_python312() {
    for c in "${VLA_PYTHON:-}" python3.12 "$(command -v pyenv >/dev/null && echo "$(pyenv root)/versions/3.12.1/bin/python3.12")" \
             "$HOME/.pyenv/versions/3.12.1/bin/python3.12" python3; do
        [ -n "$c" ] || continue
        if command -v "$c" >/dev/null 2>&1 && PYENV_VERSION=3.12.1 "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            echo "$c"; return 0
        fi
    done
    return 1
}
PY312="$(find_python312)" || { log "ERROR: Python 3.12 not found (LeRobot >= 0.5 and ROS 2 Jazzy need it). Set VLA_PYTHON."; exit 1; }

PIN_HASH="$(PYENV_VERSION=3.12.1 "$PY312" - "$REPO_ROOT/pyproject.toml" <<'EOF'
import hashlib, json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
pins = [project["dependencies"], project.get("optional-dependencies", {})]
print(hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()[:12])
EOF
)"
VENV="${VLA_VENV:-$CACHE_DIR/venv-$PIN_HASH}"
if [ ! -f "$VENV/.complete" ]; then
    log "building the Python 3.12 environment in $VENV (several minutes, ~8 GB)"
    rm -rf "$VENV"
    PYENV_VERSION=3.12.1 "$PY312" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip setuptools wheel >&2
    deps="$("$VENV/bin/python" - "$REPO_ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + sum(project.get("optional-dependencies", {}).values(), [])))
EOF
)"
    echo "$deps" >"$VENV/requirements.txt"
    "$VENV/bin/pip" install --progress-bar off -r "$VENV/requirements.txt" >&2
    touch "$VENV/.complete"
    # Each environment is ~8 GB: keep this one and the most recent other one, drop older ones.
    remove_stale_environments
fi
# ---------------------------------------------------------------- 4. the `vla` command
# The venv is shared by every clone, so it must not decide which clone's code runs: the
# exports below put this checkout first on PYTHONPATH, ahead of any editable install (whose
# finder comes after sys.path). The package is installed once, only for its console script and
# metadata; which clone that install names does not matter, and it is never reinstalled, so
# two clones used one after the other, or at once, each import their own code.
if [ ! -x "$VENV/bin/vla" ]; then
    log "installing the vla console script into $VENV"
    "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$REPO_ROOT" >&2
fi

# ---------------------------------------------------------------- 4b. test tools and Ray
# Packages installed on top of the main venv, keyed by their own pins file, so that adding or
# bumping one never changes the pin hash (an 8 GB rebuild). hypothesis drives the adversarial
# suites of the safety layer, the policy node and the policy server; Ray (~240 MB, no further
# dependencies here) runs `vla rl --ray` and its test on a local instance.
TEST_PINS="hypothesis==6.170.17 ray==2.60.0"
if [ "$(cat "$VENV/.test-pins" 2>/dev/null)" != "$TEST_PINS" ]; then
    log "installing the test tools and Ray ($TEST_PINS) into $VENV"
    read -r -a test_pins <<<"$TEST_PINS"
    "$VENV/bin/pip" install -q --progress-bar off "${test_pins[@]}" >&2
    echo "$TEST_PINS" >"$VENV/.test-pins"
fi

# ---------------------------------------------------------------- 5. robosuite 1.5 sidecar venv
# RoboMimic's TwoArmTransport and ToolHang exist only in robosuite >= 1.5, which cannot live
# beside the robosuite 1.4 that LIBERO pins, so sim/robomimic.py runs them in subprocess
# workers of this small venv (its interpreter is found at $CACHE_DIR/robosuite15/bin/python).
# Workers and the main process exchange pickled numpy arrays, so numpy matches the main venv.
# robosuite 1.5.2 is installed without its declared dependencies: they include mink 0.0.5
# (numpy < 2; used only by humanoid whole-body IK examples), pynput, qpsolvers and pytest,
# none of which the RoboMimic tasks import; the packages it does import are listed instead.
# mujoco 3.3.0 is the lowest robosuite 1.5.2 accepts and the one the main venv runs.
SIDECAR_PINS="robosuite==1.5.2 mujoco==3.3.0 numpy==2.2.6 scipy==1.18.1 numba==0.68.1 termcolor==3.3.0 Pillow==13.0.0 opencv-python-headless==5.0.0.93 fast-simplification==0.2.0"
SIDECAR="$CACHE_DIR/robosuite15"
if [ "$(cat "$SIDECAR/.pins" 2>/dev/null)" != "$SIDECAR_PINS" ]; then
    log "building the robosuite 1.5 sidecar environment in $SIDECAR (about a minute)"
    rm -rf "$SIDECAR"
    PYENV_VERSION=3.12.1 "$PY312" -m venv "$SIDECAR"
    read -r -a sidecar_pins <<<"$SIDECAR_PINS"
    "$SIDECAR/bin/pip" install -q --progress-bar off "${sidecar_pins[@]:1}" >&2
    "$SIDECAR/bin/pip" install -q --progress-bar off --no-deps "${sidecar_pins[0]}" >&2
    if ! check="$(cd / && MUJOCO_GL=egl "$SIDECAR/bin/python" -c \
        "import robosuite.environments.manipulation.two_arm_transport, robosuite.environments.manipulation.tool_hang" 2>&1)"; then
        echo "$check" >&2
        log "ERROR: robosuite 1.5 does not import in $SIDECAR"
        exit 1
    fi
    echo "$SIDECAR_PINS" >"$SIDECAR/.pins"
fi

# ---------------------------------------------------------------- 5b. openpi-client venv
# The real openpi client (PyPI openpi-client, numpy < 2) that tests/test_serving.py runs
# against `vla serve` to prove wire compatibility; numpy < 2 cannot share the main venv.
# openpi-client 0.1.2 imports typing_extensions without declaring it.
OPENPI_PINS="openpi-client==0.1.2 typing_extensions"
OPENPI="$CACHE_DIR/openpi-client-venv"
small_venv "$OPENPI" "$OPENPI_PINS" openpi-client

# ---------------------------------------------------------------- 5c. lint venv
# ruff (lint + format) and mypy for .ci/run (scripts/lint.sh), in their own small venv so that
# bumping them never changes the main environment's pin hash (an 8 GB rebuild). mypy reads the
# main venv's packages through --python-executable.
LINT_PINS="ruff==0.17.6 mypy==2.4.1"
LINT="$CACHE_DIR/lint-venv"
small_venv "$LINT" "$LINT_PINS" lint

# ---------------------------------------------------------------- 6. environment for callers
print_exports
log "environment ready: $VENV"

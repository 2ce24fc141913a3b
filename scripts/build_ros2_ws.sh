#!/usr/bin/env bash
# Builds the ROS 2 interface packages PyPI lacks (ros2_ws/src/{control_msgs,franka_msgs}: every
# package there whose package.xml is a member of rosidl_interface_packages) into a cache outside
# the clone, and prints the `export ...` lines that put them, and vla_ros from source, on the
# paths of any process. Use after setup_env.sh:
#     eval "$(bash scripts/setup_env.sh)" && eval "$(bash scripts/build_ros2_ws.sh)"
# Exports go to stdout, progress to stderr. A cached run takes ~0.1 s; a build from scratch
# 1-3 minutes on 2 cores (48 s on an idle machine).
set -euo pipefail

log() { echo "[ros2_ws] $*" >&2; }
die() { echo "[ros2_ws] ERROR: $*" >&2; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$REPO_ROOT/ros2_ws/src"
CACHE_DIR="${VLA_CACHE_DIR:-$HOME/.cache/vla-stack}"

[ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ] \
    || die "VIRTUAL_ENV is not set: run  eval \"\$(bash scripts/setup_env.sh)\"  first"
PY="$VIRTUAL_ENV/bin/python"

# Interface packages: the directories of ros2_ws/src whose package.xml says they are
# rosidl interface packages (so a new one is picked up without editing this script).
IFACE_PKGS=()
for xml in "$SRC"/*/package.xml; do
    grep -q "<member_of_group>rosidl_interface_packages</member_of_group>" "$xml" \
        && IFACE_PKGS+=("$(basename "$(dirname "$xml")")")
done
[ ${#IFACE_PKGS[@]} -gt 0 ] || die "no interface packages found under $SRC"

# ---------------------------------------------------------------- 1. correct the wheels
# The ros-jazzy-* message wheels were built on a manylinux machine whose Python lives in
# /opt/python/cp312-cp312. Their exported CMake targets `<pkg>::<pkg>__rosidl_generator_py`
# (share/<pkg>/cmake/export_<pkg>__rosidl_generator_pyExport.cmake) list that machine's Python
# include dir and numpy include dir in INTERFACE_INCLUDE_DIRECTORIES. A package that depends on
# them (ours depend on action_msgs, std_msgs, trajectory_msgs ...) then fails at CMake's
# generate step with 'includes non-existent path "/opt/python/cp312-cp312/include/python3.12"'.
# We replace those two paths with this interpreter's Python include dir and numpy's include
# dir. Only those export files change, and only the build-machine paths in them: the next run
# finds no /opt/python path left in them and changes nothing (a reinstalled wheel is corrected
# again). share/ament_index/.../parent_prefix_path also names /opt/python/cp312-cp312; nothing
# in a build reads it as a directory, so it is left alone.
stale=()
while IFS= read -r f; do stale+=("$f"); done < <(
    grep -lE '/opt/python/cp[0-9]+-cp[0-9]+' "$VIRTUAL_ENV"/share/*/cmake/*Export*.cmake 2>/dev/null || true)
if [ ${#stale[@]} -gt 0 ]; then
    log "correcting the build-machine include paths in ${#stale[@]} exported CMake files of the wheels"
    "$PY" - "${stale[@]}" <<'EOF'
import os, re, sys, sysconfig
import numpy

py_inc = sysconfig.get_paths()["include"]
if not os.path.isfile(os.path.join(py_inc, "Python.h")):
    sys.exit(f"[ros2_ws] ERROR: {py_inc}/Python.h is missing: install the Python 3.12 headers "
             "(Debian/Ubuntu: python3.12-dev)")
np_inc = numpy.get_include()
# Order matters: the numpy path is longer and must be replaced before the generic prefix rule.
rules = [
    (re.compile(r"/opt/python/cp\d+-cp\d+t?/lib/python3\.\d+t?/site-packages/numpy/_core/include"), np_inc),
    (re.compile(r"/opt/python/cp\d+-cp\d+t?/include/python3\.\d+t?"), py_inc),
]
for path in sys.argv[1:]:
    text = open(path).read()
    new = text
    for pattern, repl in rules:
        new = pattern.sub(lambda _m, r=repl: r, new)
    left = re.findall(r"/opt/python/cp\d+-cp\d+t?[^\";]*", new)
    if left:
        sys.exit(f"[ros2_ws] ERROR: {path} names build-machine paths this script does not know: {left}")
    if new != text:
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(new)
        os.replace(tmp, path)
EOF
fi

# ---------------------------------------------------------------- 2. build (cached)
# The key covers every input of the build: the interface packages' files (by path relative to
# ros2_ws/src, so every clone shares it), the venv (its path encodes the hash of the dependency
# pins) and RECIPE, to bump whenever the colcon/CMake invocation below changes.
# type_hashes.json is a test fixture, not a build input.
RECIPE=1
KEY="$(
    cd "$SRC"
    {
        echo "recipe $RECIPE venv $VIRTUAL_ENV"
        find "${IFACE_PKGS[@]}" -type f ! -name type_hashes.json ! -path '*/.*' ! -name '*.pyc' \
            -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-12
)"
PREFIX="$CACHE_DIR/ros2-interfaces-$KEY"

build_interfaces() {
    local work started
    log "building ${IFACE_PKGS[*]} into $PREFIX (1-3 minutes on 2 cores)"
    started=$SECONDS
    # Build and install inside a temporary directory next to the final one, then rename it into
    # place, so an interrupted build never leaves a half-built cache behind.
    work="$(mktemp -d "$CACHE_DIR/.ros2-interfaces-$KEY.XXXXXX")"
    trap "rm -rf '$work'" EXIT
    mkdir -p "$work/src"
    for p in "${IFACE_PKGS[@]}"; do cp -r "$SRC/$p" "$work/src/$p"; done
    # BUILD_TESTING=OFF: no lint tests of generated code. No CMAKE_BUILD_TYPE: -O0 compiles the
    # generated type support fastest, and its speed does not matter for a few messages.
    # Only the venv is visible to the build: an earlier eval of this script's exports must
    # not let the new build see the previous build's packages.
    if ! (cd "$work" && env -u PYTHONPATH -u LD_LIBRARY_PATH \
          AMENT_PREFIX_PATH="$VIRTUAL_ENV" CMAKE_PREFIX_PATH="$VIRTUAL_ENV" COLCON_HOME="$work/.colcon" \
          "$VIRTUAL_ENV/bin/colcon" --log-base "$work/log" build --merge-install \
            --base-paths "$work/src" --build-base "$work/build" --install-base "$work/install" \
            --event-handlers console_cohesion+ console_direct- status- summary+ \
            --cmake-args -DBUILD_TESTING=OFF "-DPython3_EXECUTABLE=$PY" "-DPYTHON_EXECUTABLE=$PY" \
            -Wno-dev >"$work/build.log" 2>&1); then
        tail -n 60 "$work/build.log" >&2
        die "colcon build of ${IFACE_PKGS[*]} failed (last 60 lines of its log above)"
    fi
    # The install tree is relocatable (CMake export files and Python modules find themselves
    # relative to their own location; the libraries carry no RPATH) except for colcon's
    # setup.sh-style scripts, which name the install dir, and the .pyc files, whose tracebacks
    # would name it: point both at the final location.
    grep -rlI --null "$work/install" "$work/install" | xargs -0 -r sed -i "s#$work/install#$PREFIX#g"
    "$PY" -m compileall -q -f -s "$work/install" -p "$PREFIX" "$work/install/lib" >/dev/null
    touch "$work/install/.complete"
    mv -T "$work/install" "$PREFIX"
    rm -rf "$work"
    trap - EXIT
    log "built in $((SECONDS - started)) s"
}

if [ ! -f "$PREFIX/.complete" ]; then
    mkdir -p "$CACHE_DIR"
    # One build at a time per cache: a second caller (a parallel test, another shell) waits
    # for the first and then finds the result.
    exec 9>"$CACHE_DIR/.ros2-interfaces.lock"
    if ! flock -n 9; then
        log "another process is building the interfaces; waiting for it"
        flock 9
    fi
    if [ ! -f "$PREFIX/.complete" ]; then
        # Holding the lock, no build is in flight: whatever temporary dirs exist were left by
        # a killed build, and a prefix without .complete by a crashed older version.
        rm -rf "$PREFIX" "$CACHE_DIR"/.ros2-interfaces-*.??????
        build_interfaces
    fi
    flock -u 9
    exec 9>&-
fi
# Most recently used first: keep this build and the most recent other one (another branch's
# sources, say) and drop older ones.
touch "$PREFIX"
{ ls -dt "$CACHE_DIR"/ros2-interfaces-* 2>/dev/null | grep -vx "$PREFIX" || true; } | tail -n +2 |
    while read -r old; do
        log "removing stale interface build $old"
        rm -rf "$old"
    done

# ---------------------------------------------------------------- 3. environment for callers
SITE="$(echo "$PREFIX"/lib/python3*/site-packages)"
[ -d "$SITE" ] || die "no site-packages in $PREFIX/lib: delete $PREFIX and run again"
echo "export AMENT_PREFIX_PATH='$PREFIX:$VIRTUAL_ENV'"
echo "export PYTHONPATH='$SITE:$REPO_ROOT/ros2_ws/src/vla_ros'\${PYTHONPATH:+:\$PYTHONPATH}"
echo "export LD_LIBRARY_PATH='$PREFIX/lib'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
echo "export ROS_AUTOMATIC_DISCOVERY_RANGE=\${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
log "interfaces ready: $PREFIX"

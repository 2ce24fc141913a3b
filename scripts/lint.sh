#!/usr/bin/env bash
# Lint, format check and type check, as .ci/run runs them. Needs the set-up's environment:
#     eval "$(bash scripts/setup_env.sh)" && bash scripts/lint.sh
# ruff and mypy live in their own small venv ($VLA_LINT_BIN); mypy resolves third-party types
# (torch, numpy) from the main venv's interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${VLA_LINT_BIN:?run  eval \"\$(bash scripts/setup_env.sh)\"  first}"
# The typed core: flow math, RL objectives, action heads and policy config, the observation
# contract, thread budgets, registries, the safety layer and the action-chunk scheduler.
TYPED=(vla/flow vla/rl vla/seeding.py vla/policies/heads.py vla/policies/config.py vla/observation.py vla/threads.py vla/registry.py
       vla/keys.py hardware/safety.py hardware/action_chunks.py hardware/franka/limits.py)
echo "[lint] ruff check" >&2
"$VLA_LINT_BIN/ruff" check .
echo "[lint] ruff format --check" >&2
"$VLA_LINT_BIN/ruff" format --check .
echo "[lint] mypy ${TYPED[*]}" >&2
# The cache lives beside the venvs: every clone (and CI's fresh one) reuses the analysis of torch.
"$VLA_LINT_BIN/mypy" --cache-dir "${VLA_CACHE_DIR:-$HOME/.cache/vla-stack}/mypy-cache" \
    --python-executable "$VIRTUAL_ENV/bin/python" "${TYPED[@]}"

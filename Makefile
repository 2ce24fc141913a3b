# The two commands of the README. Both set up everything they need (idempotent, cached
# outside the clone: ~/.cache/vla-stack) and then run.
SHELL := /bin/bash
ENV := eval "$$(bash scripts/setup_env.sh)" && eval "$$(bash scripts/build_ros2_ws.sh)" &&
PYTEST_ARGS ?=

.PHONY: demo test setup bench

demo:  ## set up, then run the main job on its embedded defaults
	$(ENV) vla demo

test:  ## set up, then run the test suite (VLA_FULL=1 for the long versions of heavy checks)
	$(ENV) python -m pytest tests $(PYTEST_ARGS)

setup:
	$(ENV) vla --help >/dev/null && echo "environment ready"

bench:
	$(ENV) vla bench sim

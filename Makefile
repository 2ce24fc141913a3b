# The two commands of the README. Both set up everything they need (idempotent, cached
# outside the clone: ~/.cache/vla-stack) and then run.
SHELL := /bin/bash
# Each set-up script's output is captured and its exit status checked before it is eval'd:
# `eval "$(script)"` would swallow a failure and leave the next step to fail obscurely.
ENV := setup_exports="$$(bash scripts/setup_env.sh)" && eval "$$setup_exports" && \
	ros_exports="$$(bash scripts/build_ros2_ws.sh)" && eval "$$ros_exports" &&
PYTEST_ARGS ?=

.PHONY: demo test lint setup bench

demo:  ## set up, then run the main job on its embedded defaults
	$(ENV) vla demo

test:  ## set up, then run the test suite (VLA_FULL=1 for the long versions of heavy checks)
	# The ROS graph tests run first, in their own pytest process: right after the rest of the
	# suite, the first of them saw multi-second stalls in CI that the same tests alone never show.
	$(ENV) python -m pytest tests/test_ros_*.py $(PYTEST_ARGS) && python -m pytest tests --ignore-glob='tests/test_ros_*' $(PYTEST_ARGS)

lint:  ## ruff (lint + format check) and mypy on the typed core
	$(ENV) bash scripts/lint.sh

setup:
	$(ENV) vla --help >/dev/null && echo "environment ready"

bench:
	$(ENV) vla bench sim

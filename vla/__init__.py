"""VLA robot-learning stack: core library (policies, datasets, CLI)."""

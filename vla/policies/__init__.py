"""Flow VLA policies: config, networks, the policy object, checkpoints."""

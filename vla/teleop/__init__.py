"""Teleoperation recording (application layer): devices from ``hardware.teleop`` drive a
simulator (``sim``) and every episode goes through the crash-safe ``EpisodeRecorder``."""

"""Real devices and the safety code around them (usable without ROS; heavy SDKs imported lazily)."""

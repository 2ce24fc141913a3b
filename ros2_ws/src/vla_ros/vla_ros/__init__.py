"""ROS 2 nodes of the VLA stack: camera, policy, simulated Franka, recorder."""

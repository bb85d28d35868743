"""ROS-free core: class sets, models, engine, rendering, metrics (numpy and torch only)."""

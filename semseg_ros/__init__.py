"""semseg_ros: semantic segmentation of ROS 2 camera topics with PyTorch."""

__version__ = '0.1.0'

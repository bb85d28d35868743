"""Packaging for semseg_ros (ament_python)."""

from glob import glob
import os

from setuptools import find_packages
from setuptools import setup

package_name = 'semseg_ros'


def tree(folder):
    """Return data_files entries that install every file below a folder into the share dir."""
    entries = {}
    for path in glob(os.path.join(folder, '**', '*'), recursive=True):
        if os.path.isfile(path):
            target = os.path.join('share', package_name, os.path.dirname(path))
            entries.setdefault(target, []).append(path)
    return sorted(entries.items())


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ] + tree('launch') + tree('config'),
    install_requires=['setuptools', 'numpy', 'pyyaml', 'tqdm', 'rosbags'],
    extras_require={'test': ['pytest', 'hypothesis']},
    zip_safe=True,
    maintainer='semseg_ros maintainers',
    maintainer_email='maintainers@semseg-ros.dev',
    description='Semantic segmentation of ROS 2 camera topics with PyTorch.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'semseg_node = semseg_ros.node:main',
            'camera_source = semseg_ros.tools.camera_source:main',
            'semseg-ros-demo = semseg_ros.tools.demo:main',
            'semseg-ros-eval = semseg_ros.tools.evaluate:main',
            'semseg-ros-bag = semseg_ros.tools.bag:main',
            'semseg-ros-replay = semseg_ros.tools.replay:main',
            'semseg-ros-model = semseg_ros.tools.model:main',
            'semseg-ros-make-bag = semseg_ros.tools.make_bag:main',
            'semseg-ros-data = semseg_ros.tools.data:main',
            'semseg-ros-train = semseg_ros.tools.train:main',
        ],
    },
)

"""Launch a camera source and the segmentation node together (a demo without a camera)."""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch.substitutions import PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    """Return the launch description: camera_source -> semseg."""
    source = LaunchConfiguration('source')
    rate = LaunchConfiguration('rate')
    return LaunchDescription([
        DeclareLaunchArgument(
            'source', default_value='',
            description='Video file or image folder for the camera source; empty: a synthetic '
                        'pattern'),
        DeclareLaunchArgument(
            'rate', default_value='10.0', description='Camera rate in Hz'),
        Node(
            package='semseg_ros',
            executable='camera_source',
            name='camera_source',
            output='screen',
            parameters=[{'source': source, 'rate': rate, 'loop': True, 'count': 0}],
        ),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(PathJoinSubstitution(
                [FindPackageShare('semseg_ros'), 'launch', 'semseg.launch.py']))),
    ])

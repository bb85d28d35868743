"""Launch the semseg_ros segmentation node with its parameter file."""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    """Return the launch description: one semseg node, remappable input."""
    default_params = os.path.join(
        get_package_share_directory('semseg_ros'), 'config', 'semseg.yaml')
    params_file = LaunchConfiguration('params_file')
    namespace = LaunchConfiguration('namespace')
    image_topic = LaunchConfiguration('image_topic')
    autostart = LaunchConfiguration('autostart')
    use_respawn = LaunchConfiguration('use_respawn')
    log_level = LaunchConfiguration('log_level')
    return LaunchDescription([
        DeclareLaunchArgument(
            'params_file', default_value=default_params,
            description='Full path to the parameter YAML file of the node (one camera, '
                        'several cameras or compressed input: see config/examples/)'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node and of its relative topics'),
        DeclareLaunchArgument(
            'image_topic', default_value='image',
            description='Input sensor_msgs/Image topic (remaps the relative topic "image"; '
                        'with several cameras, remap each <camera>/image instead)'),
        DeclareLaunchArgument(
            'autostart', default_value='true',
            description='Configure and activate the node at start-up; false leaves the '
                        'lifecycle node unconfigured for a lifecycle manager'),
        DeclareLaunchArgument(
            'use_respawn', default_value='false',
            description='Restart the node if it exits'),
        DeclareLaunchArgument(
            'log_level', default_value='info',
            description='Logging level (debug, info, warn, error, fatal)'),
        Node(
            package='semseg_ros',
            executable='semseg_node',
            name='semseg',
            namespace=namespace,
            output='screen',
            respawn=use_respawn,
            respawn_delay=2.0,
            parameters=[params_file, {'autostart': ParameterValue(autostart, value_type=bool)}],
            remappings=[('image', image_topic)],
            arguments=['--ros-args', '--log-level', log_level],
        ),
    ])

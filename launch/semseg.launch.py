"""Launch the semseg_ros segmentation node with its parameter file."""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.actions import OpaqueFunction
from launch.actions import SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch.substitutions import PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from semseg_ros.core.names import camera_info_topic


def input_remappings(context):
    """Return the remappings of image and camera_info (the image topic's sibling by default)."""
    image = LaunchConfiguration('image_topic').perform(context)
    info = LaunchConfiguration('camera_info_topic').perform(context)
    return [('image', image), ('camera_info', info or camera_info_topic(image))]


def segmentation_node(context):
    """Return the node action, its input remapped (camera_info follows image_topic)."""
    return [Node(
        package='semseg_ros',
        executable='semseg_node',
        name='semseg',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        respawn=LaunchConfiguration('use_respawn'),
        respawn_delay=2.0,
        parameters=[LaunchConfiguration('params_file'),
                    {'autostart': ParameterValue(LaunchConfiguration('autostart'),
                                                 value_type=bool)}],
        remappings=input_remappings(context),
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
    )]


def generate_launch_description():
    """Return the launch description: one semseg node, remappable input."""
    share = get_package_share_directory('semseg_ros')
    default_params = os.path.join(share, 'config', 'semseg.yaml')
    default_profile = os.path.join(share, 'config', 'fastdds_shm.xml')
    dds_profile = LaunchConfiguration('dds_profile')
    profile_given = IfCondition(PythonExpression(["'", dds_profile, "' != ''"]))
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
            'camera_info_topic', default_value='',
            description='sensor_msgs/CameraInfo topic (remaps "camera_info"; read with '
                        'grid.enabled); empty: the sibling of image_topic, as image_transport '
                        'names it (/cam/image_raw -> /cam/camera_info)'),
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
        DeclareLaunchArgument(
            'dds_profile', default_value=EnvironmentVariable(
                'FASTRTPS_DEFAULT_PROFILES_FILE', default_value=default_profile),
            description='Fast DDS XML profile for the node; default: the one the environment '
                        'names, else the installed config/fastdds_shm.xml (64 MiB shared-'
                        'memory segments: without it, frames with all five outputs come back '
                        'incomplete, see docs/PERFORMANCE.md; give it to the camera driver and '
                        'the consumers too); empty = as set in the environment'),
        # Fast DDS 2.x (Jazzy) reads the first name, 3.x (Kilted) the second.
        SetEnvironmentVariable('FASTRTPS_DEFAULT_PROFILES_FILE', dds_profile,
                               condition=profile_given),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', dds_profile,
                               condition=profile_given),
        OpaqueFunction(function=segmentation_node),
    ])

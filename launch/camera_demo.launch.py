"""Launch a camera source and the segmentation node together (a demo without a camera)."""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.actions import IncludeLaunchDescription
from launch.actions import OpaqueFunction
from launch.actions import SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import EnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch.substitutions import PathJoinSubstitution
from launch.substitutions import PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare
from semseg_ros.core.names import camera_info_topic


def camera(context):
    """Return the camera source action: image and its camera_info on image_topic's level."""
    image = LaunchConfiguration('image_topic').perform(context)
    return [Node(
        package='semseg_ros',
        executable='camera_source',
        name='camera_source',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        parameters=[{'source': ParameterValue(LaunchConfiguration('source'), value_type=str),
                     'rate': ParameterValue(LaunchConfiguration('rate'), value_type=float),
                     'loop': True, 'count': 0}],
        remappings=[('image', image), ('camera_info', camera_info_topic(image))],
    )]


def generate_launch_description():
    """Return the launch description: camera_source -> semseg, in one namespace."""
    dds_profile = LaunchConfiguration('dds_profile')
    profile_given = IfCondition(PythonExpression(["'", dds_profile, "' != ''"]))
    return LaunchDescription([
        DeclareLaunchArgument(
            'source', default_value='',
            description='Video file or image folder for the camera source; empty: a synthetic '
                        'pattern'),
        DeclareLaunchArgument(
            'rate', default_value='10.0', description='Camera rate in Hz'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the camera source and of the segmentation node'),
        DeclareLaunchArgument(
            'image_topic', default_value='image',
            description='Image topic between the camera source and the node (camera_info '
                        'goes on its sibling topic)'),
        DeclareLaunchArgument(
            'dds_profile', default_value=EnvironmentVariable(
                'FASTRTPS_DEFAULT_PROFILES_FILE', default_value=PathJoinSubstitution(
                    [FindPackageShare('semseg_ros'), 'config', 'fastdds_shm.xml'])),
            description='Fast DDS XML profile of the camera source and the node (default: '
                        'the one the environment names, else the installed '
                        'config/fastdds_shm.xml: complete frames with every output); empty = '
                        'as set in the environment'),
        # Fast DDS 2.x (Jazzy) reads the first name, 3.x (Kilted) the second.
        SetEnvironmentVariable('FASTRTPS_DEFAULT_PROFILES_FILE', dds_profile,
                               condition=profile_given),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', dds_profile,
                               condition=profile_given),
        OpaqueFunction(function=camera),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(PathJoinSubstitution(
                [FindPackageShare('semseg_ros'), 'launch', 'semseg.launch.py'])),
            launch_arguments=[('dds_profile', dds_profile)]),
    ])

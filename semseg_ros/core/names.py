"""ROS name helpers that need no ROS install (used by the launch files)."""


def camera_info_topic(image_topic):
    """
    Return the camera_info topic that goes with an image topic: its sibling.

    As image_transport does: '/cam/image_raw' -> '/cam/camera_info', 'image' -> 'camera_info',
    '~/left/image' -> '~/left/camera_info'.
    """
    topic = str(image_topic).strip()
    if not topic or topic.endswith('/'):
        raise ValueError(f'not an image topic name: {image_topic!r}')
    head, sep, _ = topic.rpartition('/')
    return f'{head}{sep}camera_info'

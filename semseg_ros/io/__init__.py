"""Message <-> ndarray conversion for sensor_msgs Image and CompressedImage."""  # noqa: A005

from semseg_ros.io.image import array_to_image
from semseg_ros.io.image import compressed_to_array
from semseg_ros.io.image import image_to_array
from semseg_ros.io.image import ImageError
from semseg_ros.io.image import MAX_SIDE
from semseg_ros.io.image import SUPPORTED_ENCODINGS

__all__ = [
    'array_to_image', 'compressed_to_array', 'image_to_array', 'ImageError', 'MAX_SIDE',
    'SUPPORTED_ENCODINGS',
]

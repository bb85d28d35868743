"""
Choose frames to label from a stream: every Nth or every T seconds, near-duplicates skipped.

The bag reading lives in the `semseg-ros-data extract` tool; this module holds the choice and
the file names, so it is tested without a bag.
"""

import re

import cv2
import numpy as np

# Side of the gray thumbnail two frames are compared on.
THUMB = 32


def topic_slug(topic):
    """Return a file-name-safe form of a topic: /cam/image_raw -> cam.image_raw."""
    slug = re.sub(r'[^A-Za-z0-9_]+', '.', topic.strip('/'))
    return slug.strip('.') or 'root'


def frame_name(bag, topic, stamp_ns, suffix='.png'):
    """Return <bag>__<topic>__<stamp ns, 19 digits><suffix> (read back by dataset.frame_key)."""
    bag = re.sub(r'[^A-Za-z0-9_.-]+', '_', bag).strip('_') or 'bag'
    return f'{bag}__{topic_slug(topic)}__{int(stamp_ns):019d}{suffix}'


def thumbnail(image):
    """Return a small float gray copy of a frame (H, W[, C]) for duplicate checks."""
    if image.ndim == 3 and image.shape[2] >= 3:
        gray = cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_BGR2GRAY)
    else:
        gray = image.reshape(image.shape[0], image.shape[1])
    if gray.dtype != np.uint8:
        gray = (gray.astype(np.float32) * (255.0 / max(1.0, float(np.iinfo(gray.dtype).max))))
    return cv2.resize(gray.astype(np.float32), (THUMB, THUMB), interpolation=cv2.INTER_AREA)


class FrameSelector:
    """
    Decide, frame by frame and per topic, which frames to keep.

    ``every``: keep every Nth frame; ``period``: keep at most one frame per ``period`` seconds;
    ``min_change``: skip a frame whose gray thumbnail differs from the last kept one of its
    topic by less than this mean absolute difference (0..255 levels; 0 keeps duplicates).
    """

    def __init__(self, every=1, period=0.0, min_change=2.0):
        if int(every) < 1:
            raise ValueError(f'every must be >= 1, got {every}')
        if period < 0 or min_change < 0:
            raise ValueError('period and min_change must not be negative')
        self.every = int(every)
        self.period = float(period)
        self.min_change = float(min_change)
        self._seen = {}
        self._last_time = {}
        self._last_thumb = {}
        self.counts = {'seen': 0, 'kept': 0, 'duplicates': 0}

    def keep(self, topic, stamp, image):
        """Return True when the frame (stamp in seconds) should be kept."""
        self.counts['seen'] += 1
        index = self._seen.get(topic, 0)
        self._seen[topic] = index + 1
        if index % self.every:
            return False
        last = self._last_time.get(topic)
        if self.period and last is not None and stamp - last < self.period:
            return False
        thumb = thumbnail(image)
        previous = self._last_thumb.get(topic)
        if (self.min_change and previous is not None
                and float(np.abs(thumb - previous).mean()) < self.min_change):
            self.counts['duplicates'] += 1
            return False
        self._last_time[topic] = stamp
        self._last_thumb[topic] = thumb
        self.counts['kept'] += 1
        return True

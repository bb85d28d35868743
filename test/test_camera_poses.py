"""Per-camera pose parameters and the ground-plane check, without ROS."""

import math

import numpy as np
import pytest
from semseg_ros.core import ground
from semseg_ros.core import settings
from semseg_ros.core.settings import SettingsError

TWO = {'cameras': ['front', 'left'], 'grid.enabled': True}


def test_per_camera_names_have_the_specs_of_camera_pose():
    spec = settings.spec_of('camera_pose.left.z')
    assert spec.name == 'camera_pose.left.z' and spec.low == -1e4 and spec.high == 1e4
    assert spec.value_type is float and spec.change == 'configure' and 'left' in spec.description
    assert settings.spec_of('camera_pose.robot/front.yaw').low == -7.0
    for name in ('camera_pose.left.w', 'camera_pose..x', 'camera_pose.x', 'camera_pose.left'):
        assert settings.spec_of(name) is settings.SPECS.get(name), name
    assert settings.pose_parameter_names(('',)) == []
    assert settings.pose_parameter_names(('front', 'left'))[:2] == [
        'camera_pose.front.x', 'camera_pose.front.y']


@pytest.mark.parametrize('value,message', [
    ('abc', "camera_pose.left.x: expected float, got str 'abc'"),
    (99999999, 'camera_pose.left.x: 99999999.0 is outside'),
    (None, 'camera_pose.left.x: a value is required'),
    (True, 'camera_pose.left.x: expected float'),
])
def test_per_camera_values_are_checked(value, message):
    with pytest.raises(SettingsError, match=message):
        settings.check('camera_pose.left.x', value)


def test_integers_become_floats():
    assert settings.check('camera_pose.left.z', 2) == 2.0
    assert isinstance(settings.check('camera_pose.left.z', 2), float)
    assert isinstance(settings.check('stale_timeout', 3), float)


def test_poses_per_camera_with_the_shared_values_as_defaults():
    s = settings.from_values({**TWO, 'camera_pose.z': 1.5, 'camera_pose.left.z': 0.8,
                              'camera_pose.left.yaw': 1})
    assert s.poses['front'] == (0.0, 0.0, 1.5, 0.0, 0.0, 0.0)
    assert s.poses['left'] == (0.0, 0.0, 0.8, 0.0, 0.0, 1.0)
    assert settings.from_values({'camera_pose.z': 2.0}).poses == {'': (0, 0, 2.0, 0, 0, 0)}
    assert s.grid_max_age == 0.5


@pytest.mark.parametrize('values,message', [
    ({'camera_pose.rear.x': 1.0, **TWO}, 'camera_pose.rear.x: per-camera poses need'),
    ({'camera_pose.front.x': 1.0, 'cameras': ['front']}, 'per-camera poses need several'),
    ({'camera_pose.left.z': -0.2, **TWO},
     'camera_pose.left.z: camera left at z = -0.2 m is at or below the ground plane'),
    ({'camera_pose.front.z': 0.5, 'grid.ground_z': 0.5, **TWO},
     'camera_pose.front.z: camera front at z = 0.5 m'),
    ({'camera_pose.z': 0.0, 'grid.enabled': True},
     'parameter camera_pose.z: the camera at z = 0.0 m is at or below'),
    ({'grid.max_age': 0.0}, 'grid.max_age: 0.0 is outside'),
])
def test_bad_poses_are_refused_with_their_name(values, message):
    with pytest.raises(SettingsError, match=message):
        settings.from_values(values)


def test_under_the_ground_is_fine_without_the_grid_or_with_tf():
    settings.from_values({'camera_pose.z': -1.0})
    settings.from_values({'camera_pose.z': -1.0, 'grid.enabled': True,
                          'camera_pose.source': 'tf'})


def test_projector_refuses_a_camera_under_the_ground_and_keeps_its_lookup():
    camera = ground.CameraModel.pinhole(160, 120, 100.0)
    spec = ground.GridSpec(resolution=0.1, width=100, height=100, origin_y=-5.0)
    above = ground.camera_pose(0.0, 0.0, 1.2, pitch=math.radians(15))
    projector = ground.GroundProjector(camera, above, spec)
    before = projector.visible.copy()
    for z in (0.0, -0.5):
        with pytest.raises(ground.ProjectionError, match='at or below the ground plane'):
            projector.update(pose=ground.camera_pose(0.0, 0.0, z, pitch=math.radians(-15)))
    assert np.array_equal(projector.pose, above) and projector.builds == 1
    assert np.array_equal(projector.visible, before)
    with pytest.raises(ground.ProjectionError, match='z = 1.000 m'):
        ground.GroundProjector(camera, ground.camera_pose(0, 0, 1.0),
                               ground.GridSpec(ground_z=1.0))

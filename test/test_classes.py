"""Class sets: loading, validation with errors that name the entry, lookup tables."""

import numpy as np
import pytest
from semseg_ros.core import classes
from semseg_ros.core.classes import ClassSetError
import yaml


def write(tmp_path, data, name='set.yaml'):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def entry(i, name, color=(1, 2, 3), **extra):
    return {'id': i, 'name': name, 'color': list(color), **extra}


def test_camvid_is_the_official_set():
    camvid = classes.load('camvid')
    assert len(camvid) == 12
    assert camvid.names[3] == 'Road'
    assert camvid.drivable == (3,)
    assert camvid.ignore_id == 11
    assert camvid.colors[3].tolist() == [128, 64, 128]
    assert camvid.colors.dtype == np.uint8
    assert camvid.label_encoding == 'mono8'


def test_cityscapes_loads_with_road_drivable():
    city = classes.load('cityscapes')
    assert len(city) == 20 and city.names[0] == 'road' and city.drivable == (0,)


def test_load_by_path_and_roundtrip(tmp_path):
    camvid = classes.load('camvid')
    path = write(tmp_path, camvid.to_dict())
    again = classes.load(str(path))
    assert again.names == camvid.names
    assert again.drivable == camvid.drivable
    assert np.array_equal(again.colors, camvid.colors)


def test_drivable_lut_and_override():
    camvid = classes.load('camvid').with_drivable(['road', 'Pavement', 10])
    assert camvid.drivable == (3, 4, 10)
    lut = camvid.drivable_lut()
    assert lut[3] == 255 and lut[4] == 255 and lut[10] == 255 and lut.sum() == 3 * 255


def test_unknown_drivable_name_lists_classes():
    with pytest.raises(ClassSetError, match='no class named .Grass.*Sky, Building'):
        classes.load('camvid').with_drivable(['Grass'])


@pytest.mark.parametrize('entries,message', [
    ([entry(0, 'a'), entry(0, 'b')], r'classes\[1\] \(b\): duplicate id 0'),
    ([entry(0, 'a'), entry(1, 'A')], r'classes\[1\]: duplicate name'),
    ([entry(0, 'a', (0, 0, 256))], r'classes\[0\] \(a\): color must be'),
    ([entry(0, 'a', (0, 0))], r'color must be'),
    ([entry(0, 'a'), entry(2, 'c')], r'ids must be 0..1.*missing \[1\]'),
    ([{'id': 0, 'name': 'a'}], r'classes\[0\]: missing color'),
    ([entry(-1, 'a')], r'id must be a non-negative integer'),
    ([entry(0, '')], r'name must be a non-empty string'),
    ([entry(0, 'a', drivable='yes')], r'drivable must be true or false'),
    ([entry(0, 'a', colour=[1, 2, 3])], r'unknown keys'),
    ([], r'"classes" is empty'),
])
def test_invalid_entries_name_file_and_entry(tmp_path, entries, message):
    path = write(tmp_path, {'name': 'x', 'classes': entries})
    with pytest.raises(ClassSetError, match=message) as info:
        classes.load(str(path))
    assert str(path) in str(info.value)


def test_too_many_classes_for_a_label_image():
    data = {'classes': [entry(i, f'c{i}') for i in range(classes.MAX_CLASSES + 1)]}
    with pytest.raises(ClassSetError, match='at most 65536'):
        classes.from_dict(data, 'big.yaml')


def test_mono16_past_256_classes():
    data = {'classes': [entry(i, f'c{i}') for i in range(300)]}
    assert classes.from_dict(data).label_encoding == 'mono16'


def test_missing_and_unknown_sets(tmp_path):
    with pytest.raises(ClassSetError, match='does not exist'):
        classes.load(str(tmp_path / 'nope.yaml'))
    with pytest.raises(ClassSetError, match='unknown class set .nope.*camvid'):
        classes.load('nope')


def test_corrupt_yaml(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('classes: [ {id: 0, name: a')
    with pytest.raises(ClassSetError, match='cannot read class set'):
        classes.load(str(path))


def test_model_mismatch_names_both_counts():
    with pytest.raises(ClassSetError, match='has 12 classes but espnet outputs 20'):
        classes.load('camvid').check_model(20, 'espnet')


def test_generic_palette_distinct():
    generic = classes.generic(21)
    assert len({tuple(c) for c in generic.colors.tolist()}) == 21
    assert generic.colors[1].tolist() == [128, 0, 0]  # VOC aeroplane

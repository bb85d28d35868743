"""semseg-ros-data: label checks, importers, the split rule, check, extract and prelabel."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from semseg_ros.core import classes as class_sets
from semseg_ros.core.train import dataset
from semseg_ros.core.train import importers
from semseg_ros.core.train.frames import frame_name
from semseg_ros.core.train.frames import FrameSelector
from semseg_ros.tools import data as data_tool
import synthetic


def write(path, array):
    """Write an image, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def frames_folder(root, names, height=24, width=32):
    """Write gray frames with the given names into ROOT/images; return the folder."""
    for i, name in enumerate(names):
        write(root / name, np.full((height, width, 3), 10 * i % 250, np.uint8))
    return root


def test_read_label_refuses_color_masks_and_foreign_ids(tmp_path):
    camvid = class_sets.load('camvid')
    ids = np.arange(12, dtype=np.uint8).repeat(4).reshape(4, 12)
    assert np.array_equal(dataset.read_label(write(tmp_path / 'ok.png', ids), camvid), ids)
    gray_rgb = np.repeat(ids[:, :, None], 3, axis=2)
    assert np.array_equal(dataset.read_label(write(tmp_path / 'gray.png', gray_rgb), camvid),
                          ids)
    color = camvid.colors[ids][:, :, ::-1]
    with pytest.raises(dataset.DatasetError, match='color mask.*--format color'):
        dataset.read_label(write(tmp_path / 'color.png', color), camvid)
    foreign = ids.copy()
    foreign[0, 0] = 30
    with pytest.raises(dataset.DatasetError, match=r'ids \[30\] are outside the class set'):
        dataset.read_label(write(tmp_path / 'foreign.png', foreign), camvid)


def test_import_ids_copies_checked_labels(tmp_path):
    camvid = class_sets.load('camvid')
    frames = frames_folder(tmp_path / 'frames', ['a.png', 'b.png', 'c.png'])
    ids = (np.arange(24 * 32).reshape(24, 32) % 12).astype(np.uint8)
    write(tmp_path / 'labels' / 'a.png', ids)
    write(tmp_path / 'labels' / 'b.png', ids[::-1].copy())
    result = importers.import_dataset('ids', frames, tmp_path / 'labels', tmp_path / 'out',
                                      camvid)
    assert result['written'] == 2 and result['skipped'] == ['c.png']
    assert np.array_equal(cv2.imread(str(tmp_path / 'out/labels/a.png'), -1), ids)
    assert dataset.dataset_classes(tmp_path / 'out').names == camvid.names
    write(tmp_path / 'labels' / 'c.png', np.full((24, 32), 200, np.uint8))
    with pytest.raises(dataset.DatasetError, match='c.png: label ids'):
        importers.import_dataset('ids', frames, tmp_path / 'labels', tmp_path / 'out2', camvid)


def test_import_cityscapes_label_ids_to_train_ids(tmp_path):
    cityscapes = class_sets.load('cityscapes')
    frames = frames_folder(tmp_path / 'frames', ['aachen_000000_000019_leftImg8bit.png'],
                           height=2, width=6)
    label_ids = np.array([[7, 26, 0, 33, 255, 11], [24, 23, 6, 21, 31, 17]], np.uint8)
    write(tmp_path / 'gt' / 'aachen_000000_000019_gtFine_labelIds.png', label_ids)
    importers.import_dataset('cityscapes', frames, tmp_path / 'gt', tmp_path / 'out',
                             cityscapes)
    got = cv2.imread(str(tmp_path / 'out/labels/aachen_000000_000019.png'), -1)
    assert got.tolist() == [[0, 13, 19, 18, 19, 2], [11, 10, 19, 8, 16, 5]]
    assert (tmp_path / 'out/images/aachen_000000_000019.png').is_file()


def test_import_color_masks_through_the_palette(tmp_path):
    camvid = class_sets.load('camvid')
    frames = frames_folder(tmp_path / 'frames', ['f1.png'])
    ids = (np.arange(24 * 32).reshape(24, 32) // 7 % 12).astype(np.uint8)
    color = camvid.colors[ids][:, :, ::-1].copy()
    write(tmp_path / 'masks' / 'f1.png', color)
    importers.import_dataset('color', frames, tmp_path / 'masks', tmp_path / 'out', camvid)
    assert np.array_equal(cv2.imread(str(tmp_path / 'out/labels/f1.png'), -1), ids)
    color[0, 0] = (1, 2, 3)
    write(tmp_path / 'masks' / 'f1.png', color)
    with pytest.raises(dataset.DatasetError, match=r'not in the palette.*RGB \(3, 2, 1\)'):
        importers.import_dataset('color', frames, tmp_path / 'masks', tmp_path / 'o2', camvid)
    importers.import_dataset('color', frames, tmp_path / 'masks', tmp_path / 'o3', camvid,
                             unknown='Unlabelled')
    got = cv2.imread(str(tmp_path / 'o3/labels/f1.png'), -1)
    assert got[0, 0] == 11 and np.array_equal(got.ravel()[1:], ids.ravel()[1:])


def uncompressed_rle(mask):
    """Return the COCO uncompressed RLE (column-major run lengths) of a binary mask."""
    flat = mask.ravel(order='F')
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {'size': list(mask.shape), 'counts': counts}


def test_import_coco_matches_pycocotools_masks(tmp_path):
    from pycocotools import mask as coco_mask
    from pycocotools.coco import COCO

    h, w = 40, 60
    blob = np.zeros((h, w), np.uint8)
    cv2.circle(blob, (40, 20), 9, 1, -1)
    ring = np.zeros((h, w), np.uint8)
    cv2.rectangle(ring, (5, 25), (30, 38), 1, -1)
    compressed = coco_mask.encode(np.asfortranarray(ring))
    compressed['counts'] = compressed['counts'].decode('ascii')
    annotations = [
        {'id': 1, 'image_id': 1, 'category_id': 3, 'iscrowd': 0, 'area': 600.0,
         'segmentation': [[2.5, 2.5, 45.5, 4.0, 30.0, 30.5, 4.0, 20.0]]},
        {'id': 2, 'image_id': 1, 'category_id': 8, 'iscrowd': 1, 'area': 250.0,
         'segmentation': uncompressed_rle(blob)},
        {'id': 3, 'image_id': 2, 'category_id': 3, 'iscrowd': 0, 'area': 364.0,
         'segmentation': compressed},
        {'id': 4, 'image_id': 2, 'category_id': 5, 'iscrowd': 0, 'area': 50.0,
         'segmentation': [[40, 5, 55, 5, 55, 15, 40, 15]]},
    ]
    coco = {'images': [{'id': 1, 'file_name': 'one.png', 'height': h, 'width': w},
                       {'id': 2, 'file_name': 'sub/two.png', 'height': h, 'width': w}],
            'categories': [{'id': 3, 'name': 'road'}, {'id': 8, 'name': 'CAR'},
                           {'id': 5, 'name': 'lamp'}],
            'annotations': annotations}
    path = tmp_path / 'coco.json'
    path.write_text(json.dumps(coco))
    frames = tmp_path / 'frames'
    write(frames / 'one.png', np.zeros((h, w, 3), np.uint8))
    write(frames / 'sub' / 'two.png', np.zeros((h, w, 3), np.uint8))
    mapping = tmp_path / 'map.yaml'
    mapping.write_text('lamp: Pole\n')
    assert data_tool.main(['import', str(tmp_path / 'out'), '--format', 'coco', '--images',
                           str(frames), '--labels', str(path), '--classes', 'camvid',
                           '--background', 'Sky', '--map', str(mapping)]) == 0
    reference = COCO(str(path))
    ids = {3: 3, 8: 8, 5: 2}  # road -> Road, CAR -> Car, lamp -> Pole (camvid ids)
    for image, stem in ((1, 'one'), (2, 'sub__two')):
        expected = np.zeros((h, w), np.uint8)  # Sky = 0
        anns = sorted(reference.loadAnns(reference.getAnnIds(imgIds=[image])),
                      key=lambda a: -a['area'])
        for ann in anns:
            expected[reference.annToMask(ann) > 0] = ids[ann['category_id']]
        got = cv2.imread(str(tmp_path / 'out' / 'labels' / f'{stem}.png'), -1)
        assert np.array_equal(got, expected), stem
        assert len(np.unique(got)) == 3
    coco['categories'].append({'id': 9, 'name': 'spaceship'})
    path.write_text(json.dumps(coco))
    with pytest.raises(dataset.DatasetError, match=r"categories \['lamp', 'spaceship'\]"):
        importers.import_dataset('coco', frames, path, tmp_path / 'o2',
                                 class_sets.load('camvid'))


def test_split_keeps_time_blocks_and_bags_together():
    names = [frame_name(bag, '/cam/image', 10**18 + int(i * 0.1 * 1e9))
             for bag in ('run1', 'run2') for i in range(100)]
    assignment = dataset.split_frames(names, 'time', 0.2, blocks=10)
    for bag in ('run1', 'run2'):
        sequence = [assignment[n] for n in names if n.startswith(bag)]
        changes = sum(a != b for a, b in zip(sequence, sequence[1:]))
        assert sequence.count('val') == 20 and changes <= 4
    by_block = dataset.split_frames(names, 'time', 0.2, block_seconds=2.5)
    assert sum(v == 'val' for v in by_block.values()) == 50
    by_bag = dataset.split_frames(names + [frame_name('run3', '/cam/image', 10**18)], 'group',
                                  0.34)
    for bag in ('run1', 'run2', 'run3'):
        assert len({v for n, v in by_bag.items() if n.startswith(bag)}) == 1
    assert set(by_bag.values()) == {'train', 'val'}
    camvid = [f'0001TP_{i:06d}.png' for i in range(6690, 9000, 30)]
    camvid += [f'Seq05VD_f{i:05d}.png' for i in range(0, 3000, 30)]
    split = dataset.split_frames(camvid, 'time', 0.2)
    seq = [split[n] for n in camvid if n.startswith('Seq05VD')]
    assert 15 <= seq.count('val') <= 25
    assert sum(a != b for a, b in zip(seq, seq[1:])) <= 4
    with pytest.raises(dataset.DatasetError, match='at least two bags'):
        dataset.split_frames(names[:100], 'group')


def test_split_and_check_commands(tmp_path, capsys):
    root = synthetic.draw_dataset(tmp_path / 'd', 30, seed=4)
    assert data_tool.main(['split', str(root), str(tmp_path / 's'), '--blocks', '5']) == 0
    train = dataset.pairs(tmp_path / 's' / 'train')
    val = dataset.pairs(tmp_path / 's' / 'val')
    assert len(train) == 24 and len(val) == 6
    assert [p.name for p, _ in val] == [f'seq_{i:05d}.png' for i in range(12, 18)]
    assert data_tool.main(['check', str(root), '--output', str(tmp_path / 'c')]) == 0
    out = capsys.readouterr().out
    assert '30 labelled images; sizes: 64x48 (30)' in out and 'disc' in out
    stats = json.loads((tmp_path / 'c' / 'stats.json').read_text())
    assert stats['ids'] == [0, 1, 2, 3, 4] and sum(stats['pixels']) == 30 * 64 * 48
    assert cv2.imread(str(tmp_path / 'c' / 'mosaic.png')) is not None
    label = dataset.pairs(root)[3][1]
    write(label, np.full((48, 64), 9, np.uint8))
    assert data_tool.main(['check', str(root), '--output', str(tmp_path / 'c')]) == 1
    assert f'{label.name}: label ids [9] are outside' in capsys.readouterr().err


def test_frame_selector_every_period_and_duplicates():
    frame = np.zeros((24, 32, 3), np.uint8)
    other = np.full((24, 32, 3), 200, np.uint8)
    selector = FrameSelector(every=2, min_change=2.0)
    kept = [selector.keep('/a', i * 0.1, frame if i < 4 else other) for i in range(8)]
    assert kept == [True, False, False, False, True, False, False, False]
    assert selector.counts['duplicates'] == 2  # frames 2 and 6
    timed = FrameSelector(period=0.25, min_change=0)
    kept = [timed.keep('/a', i * 0.1, frame) for i in range(8)]
    assert kept == [True, False, False, True, False, False, True, False]
    name = frame_name('my bag', '/cam/image_raw', 5)
    assert name == 'my_bag__cam.image_raw__' + '0' * 18 + '5.png'
    assert dataset.frame_key(Path(frame_name('b', '/c', 2 * 10**9)).stem) == ('b__c', 2.0)


def test_extract_frames_from_a_bag(tmp_path):
    import test_bag as bags

    height, width = 48, 64
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(3)]
    sequence = [0, 0, 1, 1, 1, 2]  # frames 1, 3 and 4 repeat the one before
    messages = []
    for i, which in enumerate(sequence):
        stamp = bags.START + i * 100_000_000
        messages.append(('/cam/image', bags.IMAGE, stamp, bags.image_raw(pictures[which],
                                                                         stamp)))
        messages.append(('/front/image/compressed', bags.COMPRESSED, stamp + 1,
                         bags.compressed_raw(pictures[2 - which], stamp + 1)))
    source = bags.write_bag(tmp_path / 'run1', 'mcap', messages)
    out = tmp_path / 'frames'
    assert data_tool.main(['extract', str(source), str(out), '--topics', '/cam/image',
                           '--no-progress']) == 0
    files = sorted((out / 'images').iterdir())
    assert [f.name for f in files] == [frame_name('run1', '/cam/image', bags.START + i * 10**8)
                                       for i in (0, 2, 5)]
    for path, which in zip(files, (0, 1, 2)):
        assert np.array_equal(cv2.imread(str(path))[:, :, ::-1], pictures[which])
    assert data_tool.main(['extract', str(source), str(tmp_path / 'all'), '--min-change', '0',
                           '--every', '2', '--no-progress']) == 0
    assert len(list((tmp_path / 'all' / 'images').iterdir())) == 6


def test_prelabel_writes_the_models_labels(tmp_path, capsys):
    from semseg_ros.core.models import registry
    import torch
    import yaml

    registry.register('tinynet', 'synthetic:build')
    try:
        root = synthetic.draw_dataset(tmp_path / 'd', 3, seed=6)
        classes_yaml = tmp_path / 'shapes.yaml'
        classes_yaml.write_text(yaml.safe_dump(synthetic.CLASSES))
        torch.save(synthetic.TinyNet().state_dict(), tmp_path / 'w.pt')
        params = synthetic.base_params(tmp_path, classes_yaml, tmp_path / 'w.pt')
        assert data_tool.main(['prelabel', str(root / 'images'), str(tmp_path / 'pre'),
                               '--params', str(params), '--preview', '--no-progress']) == 0
        labels = sorted((tmp_path / 'pre' / 'labels').iterdir())
        assert len(labels) == 3 and len(list((tmp_path / 'pre' / 'preview').iterdir())) == 3
        label = cv2.imread(str(labels[0]), -1)
        assert label.shape == (48, 64) and label.max() < 5
        assert dataset.dataset_classes(tmp_path / 'pre').names == synthetic.shapes().names
        # Pre-labelling a dataset's own frames keeps them.
        before = [p.read_bytes() for p in dataset.image_files(root / 'images')]
        assert data_tool.main(['prelabel', str(root / 'images'), str(root), '--params',
                               str(params), '--no-progress']) == 0
        assert [p.read_bytes() for p in dataset.image_files(root / 'images')] == before
    finally:
        registry._BACKENDS.pop('tinynet', None)

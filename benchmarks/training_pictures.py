"""
Make the pictures of docs/TRAINING.md from synthetic scenes (no third-party data).

    python benchmarks/training_pictures.py [--output docs/images/training] [--work /tmp/x]

Draws 60 frames of the tests' synthetic scenes (textured ground with discs, boxes and bars)
named as `semseg-ros-data extract` names frames, then runs the real commands on them:
`semseg-ros-data check` (mosaic), `semseg-ros-data split` (time blocks) and
`semseg-ros-train` from a small network trained briefly on scenes where bars were labelled
ground (it knows three of the four classes): curves and gate mosaic. The pictures are copied
into --output.
"""

import argparse
from pathlib import Path
import shutil
import sys
import tempfile

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'test'))

from semseg_ros.core.models import registry  # noqa: E402
from semseg_ros.core.train.frames import frame_name  # noqa: E402
from semseg_ros.tools import data as data_tool  # noqa: E402
from semseg_ros.tools import train as train_tool  # noqa: E402
import synthetic  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

MAX_WIDTH = 560  # pixels of a picture in the docs
BASE_CLASSES = {'name': 'base', 'ignore_id': 3, 'classes': [
    {'id': 0, 'name': 'ground', 'color': [90, 90, 90]},
    {'id': 1, 'name': 'disc', 'color': [220, 40, 40]},
    {'id': 2, 'name': 'box', 'color': [40, 200, 40]},
    {'id': 3, 'name': 'void', 'color': [0, 0, 0]}]}


def draw_recording(folder, count=60, seed=7):
    """Write frames named like extract output (bag 'yard', 10 Hz) with their labels."""
    rng = np.random.default_rng(seed)
    for sub in ('images', 'labels'):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, label = synthetic.scene(rng, 96, 72)
        name = frame_name('yard', '/cam/image_raw', 1_700_000_000 * 10**9 + i * 10**8)
        cv2.imwrite(str(folder / 'images' / name), image)
        cv2.imwrite(str(folder / 'labels' / name), label)
    (folder / 'classes.yaml').write_text(yaml.safe_dump(synthetic.CLASSES, sort_keys=False))


def train_base(work):
    """Train the small base network briefly on scenes whose bars are labelled ground."""
    from semseg_ros.core import classes as class_sets
    from semseg_ros.core.train import dataset, loop
    from semseg_ros.core.train.augment import SegmentationSamples

    root = synthetic.draw_dataset(work / 'base_data', 24, seed=11, width=96, height=72)
    for _, label in dataset.pairs(root):
        ids = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
        ids[ids == 3] = 0  # the base model never saw bars: they were ground to it
        ids[ids == 4] = 3  # void
        cv2.imwrite(str(label), ids)
    (root / 'classes.yaml').write_text(yaml.safe_dump(BASE_CLASSES))
    classes = class_sets.from_dict(BASE_CLASSES)
    net = synthetic.TinyNet(4)
    items = dataset.pairs(root)
    loop.fit(net, SegmentationSamples(items, classes, net.preprocess, (96, 72)),
             SegmentationSamples(items[:4], classes, net.preprocess, (96, 72), train=False),
             work / 'base_run', loop.TrainConfig(epochs=3, lr=5e-3, progress=False))
    torch.save(net.state_dict(), work / 'base.pt')


def main(argv=None):
    """Run the tools on synthetic data and copy their pictures."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--output', default=str(ROOT / 'docs' / 'images' / 'training'))
    parser.add_argument('--work', help='working folder (default: a temporary one)')
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix='training_pictures_'))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    registry.register('tinynet', 'synthetic:build')
    draw_recording(work / 'recording')
    assert data_tool.main(['check', str(work / 'recording'), '--output',
                           str(work / 'check')]) == 0
    assert data_tool.main(['split', str(work / 'recording'), str(work / 'split'),
                           '--blocks', '5']) == 0
    (work / 'base_classes.yaml').write_text(yaml.safe_dump(BASE_CLASSES))
    torch.manual_seed(0)
    train_base(work)
    params = synthetic.base_params(work, work / 'base_classes.yaml', work / 'base.pt')
    code = train_tool.main([str(work / 'split' / 'train'), str(work / 'model'), '--params',
                            str(params), '--val', str(work / 'split' / 'val'), '--epochs', '10',
                            '--lr', '5e-3', '--device', 'cpu', '--no-progress'])
    assert code == 0, code
    for source, name in ((work / 'check' / 'mosaic.png', 'check_mosaic.png'),
                         (work / 'model' / 'train' / 'gate.png', 'gate.png')):
        picture = cv2.imread(str(source))
        scale = min(1.0, MAX_WIDTH / picture.shape[1])
        picture = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(output / name), picture, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    shutil.copy(work / 'model' / 'train' / 'curves.png', output / 'curves.png')
    print(f'pictures in {output}; run folder {work}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

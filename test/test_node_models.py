"""
The node with models from elsewhere.

A YOLO26 semantic model (backend auto) and a plain class-id TorchScript file without metadata
(its warnings in the log, no confidence faked).
"""

from conftest import claim_domain
import numpy as np
import pytest
from semseg_ros.io.image import image_to_array
from test_node_integration import Harness, start_node, stop_node, stripes
import torch

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning',
                                        'ignore::torch.jit.TracerWarning')


class ArgmaxChannels(torch.nn.Module):
    """Class ids = the strongest input channel (argmax inside the model)."""

    def forward(self, x):
        return x.argmax(dim=1)


def test_yolo26_semantic_model_runs_in_the_node(tmp_path, monkeypatch):
    pytest.importorskip('ultralytics')
    from ultralytics import YOLO

    monkeypatch.setenv('YOLO_OFFLINE', '1')
    torch.manual_seed(0)
    path = tmp_path / 'yolo26n-sem.pt'
    YOLO('yolo26n-sem.yaml').save(str(path))
    domain = claim_domain()
    process = start_node(domain, 'model.backend:=auto', f'model.weights:={path}',
                         'model.allow_pickle:=true')
    harness = Harness(domain, outputs=('label', 'confidence'))
    try:
        harness.wait_ready(process)
        header = harness.send(stripes(48, 80), 'rgb8')
        got = harness.wait_outputs(header, ('label', 'confidence'))
    finally:
        harness.close()
        log = stop_node(process)
    labels = image_to_array(got['label'])[0][:, :, 0]
    assert labels.shape == (48, 80) and labels.max() < 19
    assert image_to_array(got['confidence'])[0].shape[:2] == (48, 80)
    assert 'model auto -> ultralytics (yolo26n-sem)' in log


def test_plain_class_id_file_warns_and_publishes_no_confidence(tmp_path):
    path = tmp_path / 'argmax.ts'
    torch.jit.save(torch.jit.trace(ArgmaxChannels(), torch.zeros(1, 3, 8, 8)), str(path))
    domain = claim_domain()
    process = start_node(domain, 'model.backend:=auto', f'model.weights:={path}',
                         'model.options:="{num_classes: 3}"')
    harness = Harness(domain, outputs=('label', 'confidence'))
    try:
        harness.wait_ready(process)
        header = harness.send(stripes(12, 18), 'rgb8')
        got = harness.wait_outputs(header, ('label',))
        harness.spin(1.0)
        got = harness.received[(header.stamp.sec, header.stamp.nanosec)]
    finally:
        harness.close()
        log = stop_node(process)
    labels = image_to_array(got['label'])[0][:, :, 0]
    assert np.array_equal(labels[:, :6], np.zeros((12, 6), np.uint8))
    assert 'confidence' not in got
    assert 'no preprocessing metadata' in log and 'no per-pixel confidence' in log
    assert log.count('WARN') >= 2

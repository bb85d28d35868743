"""
Node parameters as data: one table of specs, read once into a validated Settings object.

The node declares every parameter from PARAMETERS (description, type, range or choices,
read-only flag) and builds Settings from the values; tests and tools build Settings from a
dict or a params YAML without ROS.
"""

from dataclasses import dataclass, field, replace
from typing import Any, Optional, Tuple

from semseg_ros.core import paths
import yaml


class SettingsError(ValueError):
    """A parameter value is invalid; the message names the parameter."""


@dataclass(frozen=True)
class Spec:
    """One parameter: name, default, description and constraints."""

    name: str
    default: Any
    description: str
    choices: Tuple[str, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None
    # When a new value takes effect: 'runtime' (at once), 'swap' (at once on a configured
    # node: the model is rebuilt beside the running one and swapped between frames, see
    # core/swap.py), 'configure' (the next lifecycle configure: deactivate, cleanup, set,
    # configure; or a restart) or 'restart' (read-only).
    change: str = 'configure'

    @property
    def read_only(self):
        """Return True for parameters that only a restart can change."""
        return self.change == 'restart'

    @property
    def value_type(self):
        """Return the Python type of the value (list for arrays)."""
        return list if isinstance(self.default, list) else type(self.default)


OUTPUT_NAMES = ('label', 'color', 'overlay', 'drivable', 'confidence')
RELIABILITY = ('reliable', 'best_effort')

PARAMETERS = (
    Spec('model.backend', 'espnet', 'Model backend: espnet (CamVid), espnetv2 (Cityscapes), '
         'torchscript, export (.pt2), onnx, torchvision, huggingface, smp, ultralytics, or '
         'auto (inferred from model.weights and its model card). See docs/MODELS.md.',
         change='swap'),
    Spec('model.weights', '', 'Weights or model file. Empty: the published weights of the '
         'built-in model, from the cache directory (SEMSEG_ROS_CACHE) or downloaded once.',
         change='swap'),
    Spec('model.download', True, 'Allow downloading published weights missing from the cache.',
         change='swap'),
    Spec('model.options', '', 'Backend options as a YAML mapping, e.g. "{name: '
         'deeplabv3_resnet50}" (torchvision), "{arch: unet, encoder: resnet34, classes: 5}" '
         '(smp), "{conf: 0.4}" (ultralytics), "{providers: [CPUExecutionProvider]}" (onnx).',
         change='swap'),
    Spec('model.allow_pickle', False, 'Allow model files that are Python pickles (Ultralytics '
         '.pt): they can run code when loaded. Only for files you trust.', change='swap'),
    Spec('model.runtime', 'auto', 'What executes the model: auto (CPU and a fixed input '
         'size: the fastest of torch, onnxruntime and openvino timed at start-up, among exports '
         "whose labels match torch's; a model at each frame's size or CUDA: torch), torch, "
         'onnxruntime, openvino, tensorrt (CUDA, onnxruntime-gpu with '
         'TensorRT; fp16 with precision fp16). Exports are cached in the cache directory. See '
         'docs/PERFORMANCE.md.',
         choices=('auto', 'torch', 'onnxruntime', 'openvino', 'tensorrt'), change='swap'),
    Spec('model.input_width', 0, 'Width the model runs at; 0 = the model default (or the '
         'frame width for models without one).', low=0, high=8192, change='swap'),
    Spec('model.input_height', 0, 'Height the model runs at; 0 = the model default (or the '
         'frame height).', low=0, high=8192, change='swap'),
    Spec('model.upsample', 'logits', "How results reach the input resolution: 'logits' "
         "(bilinear logits, then argmax; best edges) or 'labels' (argmax, then nearest; "
         'cheaper).', choices=('logits', 'labels'), change='swap'),
    Spec('device', 'auto', "Torch device: 'auto' (CUDA when available, else CPU), 'cpu', "
         "'cuda' or 'cuda:N'.", change='swap'),
    Spec('precision', 'fp32', 'Inference precision: fp32; fp16/bf16 (torch autocast; fp16 '
         'also on tensorrt; bf16 also on openvino, which auto picks on a CPU with bf16 units '
         'at a fixed input size); int8 (CPU, OpenVINO: the export quantized with NNCF on '
         'frames of int8.calibration_folder, accepted only where the mIoU drops by at most '
         'int8.max_miou_drop, else fp32 with a warning; needs a fixed input size).',
         choices=('fp32', 'fp16', 'bf16', 'int8'), change='swap'),
    Spec('int8.calibration_folder', '', 'precision int8: folder of camera frames (png, jpg; '
         'or a dataset with images/) to calibrate the quantization on.', change='swap'),
    Spec('int8.validation_folder', '', 'precision int8: a labelled dataset (images/, labels/ '
         "of the model's class ids) on which the mIoU drop is measured; empty: held-out "
         "calibration frames against the fp32 model's own labels (stricter).", change='swap'),
    Spec('int8.max_miou_drop', 0.01, 'precision int8: largest mIoU drop accepted; layers go '
         'back to fp32 until the drop is within it, or int8 is refused.', low=0.0, high=1.0,
         change='swap'),
    Spec('int8.calibration_frames', 64, 'precision int8: frames of the calibration folder '
         'used (spread over it).', low=1, high=10000, change='swap'),
    Spec('channels_last', False, 'Use the channels_last memory format (faster convolutions '
         'on recent GPUs).', change='swap'),
    Spec('warmup', True, 'Run one blank frame through the model at start-up.', change='swap'),
    Spec('max_batch', 0, 'Frames (of several cameras) per forward pass; 0 = auto: all waiting '
         'frames on CUDA, one at a time on the CPU (where batching is slower per frame).',
         low=0, high=64, change='swap'),
    Spec('compile', False, 'torch.compile the model (CUDA: faster inference after a slow first '
         'frame; warmup then pays the compile time at start-up).', change='swap'),
    Spec('decode_on_device', True, 'With compressed JPEG input on CUDA, decode on the GPU '
         '(nvjpeg) so the frame goes to the device compressed; other cases decode with OpenCV.'),
    Spec('classes', '', 'Class set: a name in config/classes (camvid, cityscapes) or a YAML '
         "path. Empty: the model's own class set.", change='swap'),
    Spec('drivable_classes', [''], 'Names (or ids) of the drivable classes; empty: the '
         "'drivable: true' entries of the class set.", change='runtime'),
    Spec('overlay_alpha', 0.5, 'Opacity of the class colors in the overlay image.',
         low=0.0, high=1.0, change='runtime'),
    Spec('outputs.label', True, 'Publish segmentation/label (class id per pixel).',
         change='runtime'),
    Spec('outputs.color', True, 'Publish segmentation/color (palette colors).', change='runtime'),
    Spec('outputs.overlay', True, 'Publish segmentation/overlay (image blended with colors).',
         change='runtime'),
    Spec('outputs.drivable', True, 'Publish segmentation/drivable (255 = drivable).',
         change='runtime'),
    Spec('outputs.confidence', True, 'Publish segmentation/confidence (max softmax x 255).',
         change='runtime'),
    Spec('cameras', [''], "Input namespaces, one per camera: ['front', 'left'] reads "
         "front/image and publishes front/segmentation/*; [''] = one camera, relative names. "
         'Frames of all cameras go through the model in one batch.', change='restart'),
    Spec('input_transport', 'raw', "'raw' subscribes image (sensor_msgs/Image); 'compressed' "
         'subscribes image/compressed (sensor_msgs/CompressedImage, jpeg or png).',
         choices=('raw', 'compressed'), change='restart'),
    Spec('max_input_pixels', 4096 * 4096, 'Largest input frame accepted, in pixels (width x '
         'height), raw or compressed; a compressed frame is checked from its PNG/JPEG header '
         'before decoding, so a decompression bomb costs nothing. Larger frames are refused '
         'with an error in diagnostics. Default 16777216 (4096 x 4096).', low=1,
         high=16384 * 16384, change='runtime'),
    Spec('lazy_input', True, "Subscribe to a camera's input only while one of its enabled "
         'outputs (or the grid) has a subscriber, so a node nobody listens to receives and '
         'decodes nothing. false: always subscribed (frames are counted as skipped).',
         change='runtime'),
    Spec('qos.input.reliability', 'best_effort', 'Input QoS reliability (best_effort '
         'matches both reliable and best-effort publishers).', choices=RELIABILITY,
         change='restart'),
    Spec('qos.input.depth', 1, 'Input QoS history depth.', low=1, high=100, change='restart'),
    Spec('qos.output.reliability', 'reliable', 'Output QoS reliability.', choices=RELIABILITY,
         change='restart'),
    Spec('qos.output.depth', 1, 'Output QoS history depth.', low=1, high=100,
         change='restart'),
    Spec('grid.enabled', False, 'Project the drivable mask on the ground and publish '
         'segmentation/drivable_grid (OccupancyGrid) and segmentation/obstacles (PointCloud2); '
         'needs camera_info and the camera pose.'),
    Spec('grid.frame_id', 'base_link', 'Frame of the grid and the obstacle cloud; the ground is '
         'its plane z = grid.ground_z.'),
    Spec('grid.resolution', 0.05, 'Grid cell size on the ground (m).', low=0.005, high=10.0),
    Spec('grid.width', 200, 'Number of grid cells along x (forward).', low=1, high=20000),
    Spec('grid.height', 200, 'Number of grid cells along y (left).', low=1, high=20000),
    Spec('grid.origin_x', 0.0, 'x of the outer corner of cell (0, 0) (m).', low=-1e4, high=1e4),
    Spec('grid.origin_y', -5.0, 'y of the outer corner of cell (0, 0) (m).', low=-1e4, high=1e4),
    Spec('grid.max_range', 10.0, 'Ground distance from the camera beyond which cells stay '
         'unknown (m).', low=0.1, high=1000.0),
    Spec('grid.ground_z', 0.0, 'Height of the ground plane in grid.frame_id (m).',
         low=-100.0, high=100.0),
    Spec('grid.max_age', 0.5, "Fusion of several cameras: each camera's latest projection "
         'stays in the fused grid while its image stamp is at most this much older than the '
         "newest frame's (s); older ones drop out (reported in diagnostics). Bounds the "
         'smear of a moving robot: speed x max_age.', low=0.01, high=60.0),
    Spec('grid.obstacles', 'cells', 'Obstacle cloud: every seen non-drivable cell (cells) or '
         'only those next to a drivable cell (boundary).', choices=('cells', 'boundary')),
    Spec('camera_pose.source', 'parameters', 'Camera pose in grid.frame_id: from the '
         'camera_pose.* parameters, or from TF (image frame_id -> grid.frame_id; needs tf2_ros).',
         choices=('parameters', 'tf')),
    Spec('camera_pose.x', 0.0, 'Camera optical centre x in grid.frame_id (m).',
         low=-1e4, high=1e4),
    Spec('camera_pose.y', 0.0, 'Camera optical centre y (m).', low=-1e4, high=1e4),
    Spec('camera_pose.z', 1.0, 'Camera optical centre z (m).', low=-1e4, high=1e4),
    Spec('camera_pose.roll', 0.0, 'Camera body roll (rad; body x forward, as in URDF).',
         low=-7.0, high=7.0),
    Spec('camera_pose.pitch', 0.0, 'Camera body pitch (rad; positive looks down).',
         low=-7.0, high=7.0),
    Spec('camera_pose.yaw', 0.0, 'Camera body yaw (rad; positive turns left).',
         low=-7.0, high=7.0),
    Spec('retain_memory', True, 'Linux/glibc: one malloc arena that keeps freed memory (mmap '
         'threshold 32 MiB, trim threshold 1 GiB), so per-frame tensors reuse their pages instead '
         'of page-faulting on fresh ones every frame. false: glibc defaults.', change='restart'),
    Spec('autostart', True, 'Configure and activate at start-up. false: a managed lifecycle '
         'node that waits for configure / activate (e.g. from a lifecycle manager).',
         change='restart'),
    Spec('diagnostics_period', 1.0, 'Seconds between /diagnostics messages.',
         low=0.1, high=60.0, change='restart'),
    Spec('stale_timeout', 2.0, 'Seconds without a frame after which a camera is reported '
         'stale in diagnostics.', low=0.1, high=3600.0, change='runtime'),
)

SPECS = {spec.name: spec for spec in PARAMETERS}
GRID_FIELDS = ('frame_id', 'resolution', 'width', 'height', 'origin_x', 'origin_y',
               'max_range', 'ground_z')
POSE_FIELDS = ('x', 'y', 'z', 'roll', 'pitch', 'yaw')
POSE_PREFIX = 'camera_pose.'


def pose_parameter(camera, field):
    """Return the name of one camera's pose parameter: camera_pose.<camera>.<field>."""
    return f'{POSE_PREFIX}{camera}.{field}'


def pose_parameter_names(cameras):
    """Return the per-camera pose parameter names (declared only with several cameras)."""
    if len(cameras) < 2:
        return []
    return [pose_parameter(camera, f) for camera in cameras for f in POSE_FIELDS]


def split_pose_parameter(name):
    """Return (camera, field) of a camera_pose.<camera>.<field> name, else (None, None)."""
    if not isinstance(name, str) or not name.startswith(POSE_PREFIX):
        return None, None
    camera, dot, field = name[len(POSE_PREFIX):].rpartition('.')
    if not dot or not camera or field not in POSE_FIELDS:
        return None, None
    return camera, field


def spec_of(name):
    """Return the Spec of a parameter name, per-camera pose names included; None if unknown."""
    spec = SPECS.get(name)
    if spec is not None:
        return spec
    camera, field = split_pose_parameter(name)
    if camera is None:
        return None
    base = SPECS[POSE_PREFIX + field]
    return replace(base, name=name, description=f'{base.description} Camera {camera}.')


@dataclass(frozen=True)
class Settings:
    """Validated node settings."""

    backend: str = 'espnet'
    weights: str = ''
    download: bool = True
    options: dict = field(default_factory=dict)
    allow_pickle: bool = False
    runtime: str = 'auto'
    input_size: Optional[Tuple[int, int]] = None
    upsample: str = 'logits'
    device: str = 'auto'
    precision: str = 'fp32'
    int8: Optional[dict] = None  # Int8Plan fields when precision is int8, else None
    channels_last: bool = False
    warmup: bool = True
    compiled: bool = False
    max_batch: int = 0
    decode_on_device: bool = True
    classes: str = ''
    drivable_classes: Tuple[str, ...] = ()
    overlay_alpha: float = 0.5
    outputs: Tuple[str, ...] = OUTPUT_NAMES
    input_reliability: str = 'best_effort'
    input_depth: int = 1
    output_reliability: str = 'reliable'
    output_depth: int = 1
    cameras: Tuple[str, ...] = ('',)
    input_transport: str = 'raw'
    lazy_input: bool = True
    max_input_pixels: int = 4096 * 4096
    retain_memory: bool = True
    autostart: bool = True
    diagnostics_period: float = 1.0
    stale_timeout: float = 2.0
    grid: Optional[dict] = None  # GridSpec fields when grid.enabled, else None
    grid_max_age: float = 0.5
    pose_source: str = 'parameters'
    pose: Tuple[float, ...] = (0.0, 0.0, 1.0, 0.0, 0.0, 0.0)  # x y z roll pitch yaw
    # Camera name -> (x, y, z, roll, pitch, yaw): camera_pose.<camera>.* with several cameras,
    # else camera_pose.*.
    poses: dict = field(default_factory=dict)
    obstacles: str = 'cells'
    values: dict = field(default_factory=dict, compare=False, repr=False)


def check(name, value):
    """Validate one parameter value against its spec; return it normalised."""
    spec = spec_of(name)
    if spec is None:
        raise SettingsError(f'unknown parameter {name!r}')
    if value is None:
        raise SettingsError(f'parameter {name}: a value is required (it cannot be unset)')
    expected = spec.value_type
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is list:
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f'parameter {name}: expected a list, got {value!r}')
        value = [str(v).strip() for v in value if str(v).strip()]
    elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise SettingsError(
            f'parameter {name}: expected {expected.__name__}, got {type(value).__name__} '
            f'{value!r}')
    if spec.choices and value not in spec.choices:
        raise SettingsError(
            f'parameter {name}: {value!r} is not one of {", ".join(spec.choices)}')
    if spec.low is not None and not spec.low <= value <= spec.high:
        raise SettingsError(
            f'parameter {name}: {value} is outside {spec.low}..{spec.high}')
    if name == 'device':
        text = value.strip().lower()
        ok = text in ('auto', 'cpu', 'cuda') or (
            text.startswith('cuda:') and text[5:].isascii() and text[5:].isdigit())
        if not ok:
            raise SettingsError(
                f"parameter device: {value!r} is not 'auto', 'cpu', 'cuda' or 'cuda:N'")
        value = text
    if name == 'model.options' and value.strip():
        try:
            parsed = yaml.safe_load(value)
        except Exception as exc:  # noqa: B902 - YAML constructors raise many types
            raise SettingsError(f'parameter model.options: not valid YAML: {exc}') from None
        if not isinstance(parsed, dict):
            raise SettingsError('parameter model.options: expected a YAML mapping like '
                                f'"{{key: value}}", got {value!r}')
    if name == 'model.backend' and not value.strip():
        raise SettingsError('parameter model.backend: empty; name a backend')
    return value


def from_values(values):
    """Build Settings from a {name: value} dict (missing names take their default)."""
    unknown = sorted(name for name in values if spec_of(name) is None)
    if unknown:
        raise SettingsError(f'unknown parameters: {", ".join(map(str, unknown))}')
    v = {spec.name: spec.default for spec in PARAMETERS}
    for name, value in values.items():
        v[name] = check(name, value)
    for name in v:
        v[name] = check(name, v[name])
    width, height = v['model.input_width'], v['model.input_height']
    if (width == 0) != (height == 0):
        raise SettingsError('parameters model.input_width and model.input_height: set both '
                            f'or neither (got {width} x {height})')
    cameras = tuple(c.strip('/') for c in v['cameras']) or ('',)
    if len(set(cameras)) != len(cameras):
        raise SettingsError(f'parameter cameras: duplicate names in {list(cameras)}')
    for name in cameras:
        if not all(part.replace('_', 'a').isalnum() and not part[0].isdigit()
                   for part in name.split('/')) and name:
            raise SettingsError(f'parameter cameras: {name!r} is not a valid namespace')
    poses = _camera_poses(v, cameras)
    return Settings(
        backend=v['model.backend'].strip(),
        weights=v['model.weights'].strip(),
        download=v['model.download'],
        options=yaml.safe_load(v['model.options']) if v['model.options'].strip() else {},
        allow_pickle=v['model.allow_pickle'],
        runtime=v['model.runtime'],
        input_size=(width, height) if width else None,
        upsample=v['model.upsample'],
        device=v['device'],
        precision=v['precision'],
        int8=_int8(v),
        channels_last=v['channels_last'],
        warmup=v['warmup'],
        compiled=v['compile'],
        max_batch=v['max_batch'],
        decode_on_device=v['decode_on_device'],
        classes=v['classes'].strip(),
        drivable_classes=tuple(v['drivable_classes']),
        overlay_alpha=v['overlay_alpha'],
        outputs=tuple(o for o in OUTPUT_NAMES if v[f'outputs.{o}']),
        input_reliability=v['qos.input.reliability'],
        input_depth=v['qos.input.depth'],
        output_reliability=v['qos.output.reliability'],
        output_depth=v['qos.output.depth'],
        cameras=cameras,
        input_transport=v['input_transport'],
        lazy_input=v['lazy_input'],
        max_input_pixels=v['max_input_pixels'],
        retain_memory=v['retain_memory'],
        autostart=v['autostart'],
        diagnostics_period=v['diagnostics_period'],
        stale_timeout=v['stale_timeout'],
        grid={k: v[f'grid.{k}'] for k in GRID_FIELDS} if v['grid.enabled'] else None,
        grid_max_age=v['grid.max_age'],
        poses=poses,
        pose_source=v['camera_pose.source'],
        pose=tuple(v[f'camera_pose.{k}'] for k in POSE_FIELDS),
        obstacles=v['grid.obstacles'],
        values=v,
    )


def _int8(v):
    """Return the int8 plan fields of precision int8 (a calibration folder is required)."""
    if v['precision'] != 'int8':
        return None
    folder = v['int8.calibration_folder'].strip()
    if not folder:
        raise SettingsError('parameter int8.calibration_folder: precision int8 needs frames '
                            "to calibrate on (a folder of the robot's camera images)")
    return {'calibration_folder': folder,
            'validation_folder': v['int8.validation_folder'].strip(),
            'max_miou_drop': v['int8.max_miou_drop'],
            'calibration_frames': v['int8.calibration_frames']}


def _camera_poses(v, cameras):
    """Return {camera: pose values}; with the grid on, refuse a camera on or below the ground."""
    per_camera = pose_parameter_names(cameras)
    for name in v:
        camera, _ = split_pose_parameter(name)
        if camera is not None and name not in per_camera:
            raise SettingsError(
                f'parameter {name}: per-camera poses need several cameras and {camera!r} '
                f'among them (cameras: {list(cameras)}); one camera uses camera_pose.*')
    poses = {}
    for camera in cameras:
        names = [pose_parameter(camera, f) if per_camera else POSE_PREFIX + f
                 for f in POSE_FIELDS]
        poses[camera] = tuple(v.get(n, v[POSE_PREFIX + f]) for n, f in zip(names, POSE_FIELDS))
        z = poses[camera][2]
        ground_z = v['grid.ground_z']
        if v['grid.enabled'] and v['camera_pose.source'] == 'parameters' and z <= ground_z:
            who = f'camera {camera}' if camera else 'the camera'
            raise SettingsError(
                f'parameter {names[2]}: {who} at z = {z} m is at or below the ground plane '
                f'(grid.ground_z = {ground_z} m): it cannot see the ground from above. Give '
                'the optical centre in grid.frame_id, above grid.ground_z.')
    return poses


def flatten(tree, prefix=''):
    """Flatten nested parameter dicts ({'model': {'backend': x}}) to dotted names."""
    flat = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def params_file_values(path, node_name='semseg'):
    """Read a ROS 2 params YAML; return {dotted name: value} for node_name or '/**'."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    merged = {}
    for key in ('/**', node_name, '/' + node_name):
        section = data.get(key)
        if isinstance(section, dict):
            merged.update(flatten(section.get('ros__parameters', {})))
    return merged


def params_file_candidates():
    """Return the folders that may hold config/semseg.yaml: ament index, prefixes, source."""
    return paths.share_dirs()


def find_params_file():
    """Return the first existing config/semseg.yaml of params_file_candidates(), or None."""
    for folder in params_file_candidates():
        path = folder / 'config' / 'semseg.yaml'
        if path.is_file():
            return str(path)
    return None


def load_params_file(path, node_name='semseg'):
    """Read a ROS 2 params YAML and return Settings for node_name (or the '/**' section)."""
    return from_values(params_file_values(path, node_name))


def check_command_line(argv):
    """
    Check the -p name:=value overrides of our parameters; return the error messages.

    rcl drops an override whose type differs from the value a params file gives the same
    parameter, silently; checking the raw text here reports it instead.
    """
    errors = []
    args = list(argv or [])
    for flag, item in zip(args, args[1:]):
        if flag not in ('-p', '--param'):
            continue
        name, sep, text = item.partition(':=')
        if not sep or spec_of(name) is None:
            continue
        try:
            check(name, yaml.safe_load(text) if text.strip() else '')
        except Exception as exc:  # noqa: B902 - SettingsError, or YAML the check cannot read
            errors.append(str(exc) if name in str(exc) else f'parameter {name}: {exc}')
    return errors

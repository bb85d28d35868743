"""Find model weights: explicit path, then the cache, then a checked download."""

from dataclasses import dataclass
import hashlib
import os
import pickle
import tempfile
import threading
import urllib.error
import urllib.request
import zipfile

from semseg_ros.core.models.base import ModelError
import torch
from tqdm import tqdm

CHUNK = 1 << 16
TIMEOUT_S = 30.0


class WeightsError(ModelError):
    """Weights could not be found, downloaded, verified or read."""


@dataclass(frozen=True)
class WeightsSpec:
    """A published weights file: cache file name, download URL and its sha256 (hex)."""

    filename: str
    url: str
    sha256: str

    def __post_init__(self):
        """Validate the fields."""
        if not self.filename or os.path.basename(self.filename) != self.filename:
            raise ValueError(f'filename must be a plain file name, got {self.filename!r}')
        digest = self.sha256.lower()
        if len(digest) != 64 or any(c not in '0123456789abcdef' for c in digest):
            raise ValueError(f'sha256 must be 64 hex digits, got {self.sha256!r}')


ESPNET_CAMVID = WeightsSpec(
    filename='espnet_p_2_q_8_camvid.pth',
    url='https://github.com/sacmehta/ESPNet/raw/afe71c38edaee3514ca44e0adcafdf36109bf437/'
        'pretrained/decoder/espnet_p_2_q_8_camvid.pth',
    sha256='7d354a257170322086dcd4c1e89a482454cf2c9d30b085e70883878dd59301af',
)

ESPNETV2_CITYSCAPES = WeightsSpec(
    filename='espnetv2_s_2.0_city_1024x512.pth',
    url='https://github.com/sacmehta/EdgeNets/raw/2b232d3f7fb60658755dad1ebca0ffc895cc795e/'
        'model/segmentation/model_zoo/espnetv2/espnetv2_s_2.0_city_1024x512.pth',
    sha256='a72d59699801c7ce8e8b89a53af9097eaaa60dc12180ecde86fd700ba1222fe8',
)

# Cache files whose hash has been checked: path -> (size, mtime_ns) at the time of the check.
_verified = {}
_lock = threading.Lock()


def cache_dir():
    """Return the weights cache directory ($SEMSEG_ROS_CACHE, default ~/.cache/semseg_ros)."""
    path = os.environ.get('SEMSEG_ROS_CACHE') or os.path.join('~', '.cache', 'semseg_ros')
    return os.path.abspath(os.path.expanduser(path))


def export_cache_dir():
    """
    Return the folder of runtime exports: $SEMSEG_ROS_EXPORT_CACHE, else <cache_dir()>/runtimes.

    A separate setting, so that a read-only weights folder (shared test assets, a mounted
    model store) can serve the weights while the exports go somewhere writable.
    """
    path = os.environ.get('SEMSEG_ROS_EXPORT_CACHE') or os.path.join(cache_dir(), 'runtimes')
    return os.path.abspath(os.path.expanduser(path))


def url_of(spec):
    """
    Return the URL to download ``spec`` from.

    ``$SEMSEG_ROS_WEIGHTS_URL``, when set, is a base URL (a mirror, or a local server for
    offline sites and tests) that replaces the published location: the file is fetched from
    ``<base>/<spec.filename>``. The sha256 check is the same either way.
    """
    base = os.environ.get('SEMSEG_ROS_WEIGHTS_URL', '').strip()
    if not base:
        return spec.url
    return base.rstrip('/') + '/' + spec.filename


def sha256_of(path):
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def resolve(spec, path='', cache=None, download=True, progress=True):
    """
    Return the local path of the weights described by ``spec``.

    Order: ``path`` when given (it must exist; it is not hash-checked, it may be the user's
    own weights), then ``<cache>/<spec.filename>`` (hash-checked once per process), then a
    download of ``spec.url`` into the cache when ``download`` is true. Raises WeightsError
    with what went wrong and how to fix it.
    """
    if path:
        path = os.path.abspath(os.path.expanduser(str(path)))
        if not os.path.isfile(path):
            raise WeightsError(f'weights file {path} does not exist (or is not a file)')
        return path
    cache = cache_dir() if cache is None else os.path.abspath(os.path.expanduser(str(cache)))
    target = os.path.join(cache, spec.filename)
    if os.path.isfile(target):
        _check_cached(spec, target)
        return target
    if not download:
        raise WeightsError(
            f'weights {spec.filename} are not in the cache and downloads are disabled; '
            f'download {url_of(spec)} and place it at {target}')
    _download(spec, target, progress)
    return target


def _check_cached(spec, target):
    """Check the cached file's hash unless it was checked already and has not changed."""
    st = os.stat(target)
    stamp = (st.st_size, st.st_mtime_ns)
    with _lock:
        if _verified.get(target) == stamp:
            return
    actual = sha256_of(target)
    if actual != spec.sha256.lower():
        raise WeightsError(
            f'cached weights {target} have the wrong sha256: expected {spec.sha256.lower()}, '
            f'got {actual}; delete the file to download it again, or replace it with the '
            f'file from {url_of(spec)}')
    with _lock:
        _verified[target] = stamp


def _download(spec, target, progress):
    """Download ``spec.url`` to ``target`` through a checked temp file in the same folder."""
    folder = os.path.dirname(target)
    url = url_of(spec)
    manual = f'download {url} yourself and place it at {target}'
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{spec.filename}.', suffix='.part', dir=folder)
        digest = hashlib.sha256()
        with os.fdopen(fd, 'wb') as out:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
                size = resp.headers.get('Content-Length')
                total = int(size) if size and size.isdigit() else None
                with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024,
                          desc=spec.filename, disable=not progress, leave=False) as bar:
                    for chunk in iter(lambda: resp.read(CHUNK), b''):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        actual = digest.hexdigest()
        if actual != spec.sha256.lower():
            raise WeightsError(
                f'downloaded {spec.filename} from {url} has the wrong sha256: expected '
                f'{spec.sha256.lower()}, got {actual}; {manual}')
        os.replace(tmp, target)
        tmp = None
    except WeightsError:
        raise
    except (OSError, ValueError) as err:
        # URLError, HTTPError and timeouts are OSErrors; ValueError covers bad URLs.
        raise WeightsError(
            f'could not download weights {spec.filename} from {url} ({_reason(err)}); '
            f'offline? {manual}') from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    with _lock:
        st = os.stat(target)
        _verified[target] = (st.st_size, st.st_mtime_ns)


def _reason(err):
    """Return a short description of a download error."""
    if isinstance(err, urllib.error.HTTPError):
        return f'HTTP {err.code} {err.reason}'
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return f'{type(err).__name__}: {err}'


def read_torch_file(path):
    """
    Return what a torch file holds, loaded onto the CPU with ``weights_only=True`` (no code runs).

    A missing, truncated or corrupt file, or one holding objects the safe loader refuses,
    raises WeightsError naming the file and the reason.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise WeightsError(f'weights file {path} does not exist (or is not a file)')
    with open(path, 'rb') as f:
        head = f.read(2)
    # A torch file is a zip archive (PK) or, saved with legacy serialization, a pickle (0x80).
    if not zipfile.is_zipfile(path) and head[:1] != b'\x80':
        raise WeightsError(f'cannot read weights file {path}: truncated, corrupt or not a '
                           'PyTorch weights file')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines()]
        why = next((ln.split(':', 1)[1].strip() for ln in lines
                    if ln.startswith('WeightsUnpickler error')), lines[0] if lines else '')
        raise WeightsError(
            f'weights file {path} holds objects the safe loader (weights_only=True) refuses '
            f'({why[:200]}); save the state dict alone: torch.save(model.state_dict(), '
            'path)') from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, IndexError, KeyError,
            AttributeError, OSError) as err:
        text = str(err).strip()
        first = text.splitlines()[0] if text else ''
        raise WeightsError(
            f'cannot read weights file {path}: truncated, corrupt or not a PyTorch weights '
            f'file ({type(err).__name__}: {first[:200]})') from None


def load_state_dict_file(path):
    """
    Load a state dict (a dict of tensors) from ``path`` onto the CPU, safely.

    Uses ``torch.load(weights_only=True)``; a missing, truncated or corrupt file, or one
    that holds something other than a dict of tensors, raises WeightsError.
    """
    state = read_torch_file(path)
    if not isinstance(state, dict):
        raise WeightsError(
            f'weights file {path} holds a {type(state).__name__}, not a state dict '
            f'(a dict of tensors)')
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        hint = ''
        if any(k in ('state_dict', 'model') for k in bad):
            hint = ' (a training checkpoint? save its state dict alone)'
        raise WeightsError(
            f'weights file {path} is not a state dict: entries {bad[:5]} are not '
            f'tensors{hint}')
    return state

"""Tests of weights resolution: explicit path, cache, checked download, safe loading."""

import functools
import hashlib
import http.server
import os
from pathlib import Path
import socket
import threading

import pytest
from semseg_ros.core import weights
from semseg_ros.core.models.base import ModelError
from semseg_ros.core.weights import load_state_dict_file, resolve, WeightsError, WeightsSpec
import torch

ASSETS = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'assets'


def sha(data):
    """Return the hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def closed_port_url(name):
    """Return an http URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}/{name}'


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for var in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy',
                'ALL_PROXY'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv('SEMSEG_ROS_WEIGHTS_URL', raising=False)
    weights._verified.clear()


@pytest.fixture
def state_file(tmp_path):
    """Write a small state dict; return (path, bytes)."""
    path = tmp_path / 'src' / 'small.pth'
    path.parent.mkdir()
    torch.save({'w': torch.arange(6.0).view(2, 3), 'b': torch.zeros(2)}, path)
    return path, path.read_bytes()


class Server:
    """A local HTTP server in a thread that serves one folder and counts requests."""

    def __init__(self, folder):
        hits = self.hits = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                hits.append(self.path)

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(state_file):
    srv = Server(state_file[0].parent)
    yield srv
    srv.close()


def leftovers(folder):
    """Return the temp files a download left in ``folder``."""
    return [n for n in os.listdir(folder) if n.endswith('.part')] if folder.exists() else []


def test_error_type():
    assert issubclass(WeightsError, ModelError)


def test_spec_validation():
    with pytest.raises(ValueError, match='sha256'):
        WeightsSpec('a.pth', 'http://x/a.pth', 'abc')
    with pytest.raises(ValueError, match='file name'):
        WeightsSpec('dir/a.pth', 'http://x/a.pth', '0' * 64)


def test_published_specs():
    for spec in (weights.ESPNET_CAMVID, weights.ESPNETV2_CITYSCAPES):
        assert spec.url.startswith('https://github.com/sacmehta/')
        assert spec.url.endswith('/' + spec.filename)


@pytest.mark.parametrize('spec', [weights.ESPNET_CAMVID, weights.ESPNETV2_CITYSCAPES])
def test_published_sha256_matches_shared_file(spec):
    path = ASSETS / 'models' / spec.filename
    if not path.exists():
        pytest.skip(f'needs the shared test assets ({path} is absent)')
    assert weights.sha256_of(path) == spec.sha256


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv('SEMSEG_ROS_CACHE', str(tmp_path / 'c'))
    assert weights.cache_dir() == str(tmp_path / 'c')
    monkeypatch.delenv('SEMSEG_ROS_CACHE')
    monkeypatch.setenv('HOME', str(tmp_path))
    assert weights.cache_dir() == str(tmp_path / '.cache' / 'semseg_ros')


def test_explicit_path_wins(tmp_path, state_file):
    path, data = state_file
    cache = tmp_path / 'cache'
    cache.mkdir()
    (cache / 'small.pth').write_bytes(b'other')
    # The user's own file is not hash-checked, and the cache is not looked at.
    spec = WeightsSpec('small.pth', closed_port_url('small.pth'), '0' * 64)
    assert resolve(spec, path=str(path), cache=str(cache)) == str(path)


def test_explicit_path_missing(tmp_path):
    spec = WeightsSpec('small.pth', closed_port_url('small.pth'), '0' * 64)
    missing = tmp_path / 'nope.pth'
    with pytest.raises(WeightsError, match=str(missing)):
        resolve(spec, path=str(missing), cache=str(tmp_path))


def test_cache_hit_checked_once(tmp_path, state_file, monkeypatch):
    _, data = state_file
    cache = tmp_path / 'cache'
    cache.mkdir()
    (cache / 'small.pth').write_bytes(data)
    spec = WeightsSpec('small.pth', closed_port_url('small.pth'), sha(data))
    monkeypatch.setenv('SEMSEG_ROS_CACHE', str(cache))
    assert resolve(spec) == str(cache / 'small.pth')
    calls = []
    monkeypatch.setattr(weights, 'sha256_of', lambda p: calls.append(p) or 'x' * 64)
    assert resolve(spec, cache=str(cache)) == str(cache / 'small.pth')
    assert calls == []
    # A changed file is checked again.
    (cache / 'small.pth').write_bytes(data + b'x')
    with pytest.raises(WeightsError):
        resolve(spec, cache=str(cache))
    assert calls


def test_cache_sha_mismatch(tmp_path, state_file):
    _, data = state_file
    (tmp_path / 'small.pth').write_bytes(data)
    expected = '0' * 64
    spec = WeightsSpec('small.pth', closed_port_url('small.pth'), expected)
    with pytest.raises(WeightsError) as err:
        resolve(spec, cache=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / 'small.pth') in msg
    assert expected in msg and sha(data) in msg


def test_offline_error_names_file_url_and_place(tmp_path):
    url = closed_port_url('model.pth')
    spec = WeightsSpec('model.pth', url, '0' * 64)
    cache = tmp_path / 'cache'
    with pytest.raises(WeightsError) as err:
        resolve(spec, cache=str(cache), progress=False)
    msg = str(err.value)
    assert 'model.pth' in msg and url in msg and str(cache / 'model.pth') in msg
    assert not (cache / 'model.pth').exists()
    assert leftovers(cache) == []


def test_download_disabled(tmp_path):
    spec = WeightsSpec('model.pth', 'https://example.com/model.pth', '0' * 64)
    with pytest.raises(WeightsError) as err:
        resolve(spec, cache=str(tmp_path), download=False)
    msg = str(err.value)
    assert spec.url in msg and str(tmp_path / 'model.pth') in msg


def test_real_download(tmp_path, state_file, server, capsys):
    _, data = state_file
    cache = tmp_path / 'cache'
    spec = WeightsSpec('small.pth', f'{server.url}/small.pth', sha(data))
    path = resolve(spec, cache=str(cache))
    assert path == str(cache / 'small.pth')
    assert (cache / 'small.pth').read_bytes() == data
    assert leftovers(cache) == []
    assert 'small.pth' in capsys.readouterr().err  # the progress bar
    assert server.hits == ['/small.pth']
    state = load_state_dict_file(path)
    torch.testing.assert_close(state['w'], torch.arange(6.0).view(2, 3))
    # Second call: a cache hit, no new request.
    weights._verified.clear()
    assert resolve(spec, cache=str(cache)) == path
    assert server.hits == ['/small.pth']


def test_download_wrong_sha_leaves_nothing(tmp_path, state_file, server):
    _, data = state_file
    cache = tmp_path / 'cache'
    spec = WeightsSpec('small.pth', f'{server.url}/small.pth', 'f' * 64)
    with pytest.raises(WeightsError) as err:
        resolve(spec, cache=str(cache), progress=False)
    msg = str(err.value)
    assert 'f' * 64 in msg and sha(data) in msg and spec.url in msg
    assert os.listdir(cache) == []


def test_weights_url_override(tmp_path, state_file, server, monkeypatch):
    # A mirror (here a local server) replaces the published location; the hash check stays.
    _, data = state_file
    published = closed_port_url('small.pth')
    spec = WeightsSpec('small.pth', published, sha(data))
    assert weights.url_of(spec) == published
    monkeypatch.setenv('SEMSEG_ROS_WEIGHTS_URL', server.url + '/')
    assert weights.url_of(spec) == f'{server.url}/small.pth'
    path = resolve(spec, cache=str(tmp_path / 'cache'), progress=False)
    assert Path(path).read_bytes() == data and server.hits == ['/small.pth']
    wrong = WeightsSpec('small.pth', published, 'e' * 64)
    with pytest.raises(WeightsError, match='wrong sha256') as err:
        resolve(wrong, cache=str(tmp_path / 'other'), progress=False)
    assert f'{server.url}/small.pth' in str(err.value)
    assert os.listdir(tmp_path / 'other') == []


def test_download_http_error(tmp_path, server):
    cache = tmp_path / 'cache'
    spec = WeightsSpec('absent.pth', f'{server.url}/absent.pth', '0' * 64)
    with pytest.raises(WeightsError, match='HTTP 404') as err:
        resolve(spec, cache=str(cache), progress=False)
    assert str(cache / 'absent.pth') in str(err.value)
    assert os.listdir(cache) == []


def test_load_missing(tmp_path):
    with pytest.raises(WeightsError, match='does not exist'):
        load_state_dict_file(tmp_path / 'missing.pth')


@pytest.mark.parametrize('cut', [0, 10, 0.5, -30])
def test_load_truncated(tmp_path, state_file, cut):
    _, data = state_file
    end = int(len(data) * cut) if isinstance(cut, float) else cut if cut >= 0 else len(data) + cut
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(data[:end])
    with pytest.raises(WeightsError, match='bad.pth'):
        load_state_dict_file(bad)


def test_load_corrupt(tmp_path):
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'this is not a weights file\n' * 10)
    with pytest.raises(WeightsError, match='corrupt'):
        load_state_dict_file(bad)


def test_load_refuses_pickled_objects(tmp_path):
    bad = tmp_path / 'obj.pth'
    torch.save({'w': torch.zeros(1), 'f': functools.partial(print)}, bad)
    with pytest.raises(WeightsError, match='safe loader'):
        load_state_dict_file(bad)


def test_load_not_a_state_dict(tmp_path):
    lst = tmp_path / 'list.pth'
    torch.save([torch.zeros(1)], lst)
    with pytest.raises(WeightsError, match='holds a list'):
        load_state_dict_file(lst)
    ckpt = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'epoch': 3}, ckpt)
    with pytest.raises(WeightsError, match='checkpoint'):
        load_state_dict_file(ckpt)

"""tf.distribute: a meta-step split across replicas equals the single-device step (MirroredStrategy on two logical
CPUs; MultiWorkerMirroredStrategy with two local worker processes on loopback)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(mode, out, env=None, wait=True):
  cmd = [sys.executable, '-m', 'tests.distribute_worker', mode, str(out)]
  proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  if wait:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
  return proc


def _load(path):
  with np.load(path) as data:
    return dict(data)


@pytest.fixture(scope='module')
def single(tmp_path_factory):
  out = tmp_path_factory.mktemp('single') / 'single.npz'
  _run('single', out)
  return _load(out)


def _assert_same_run(result, single):
  np.testing.assert_allclose(result['losses'], single['losses'], rtol=1e-5)
  np.testing.assert_allclose(result['accuracies'], single['accuracies'], atol=1e-6)
  state_keys = [k for k in single if '/' in k]
  assert state_keys and set(state_keys) == {k for k in result if '/' in k}
  for key in state_keys:
    np.testing.assert_allclose(result[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_mirrored_two_logical_cpus_equals_single_device(tmp_path, single):
  out = tmp_path / 'mirrored.npz'
  _run('mirrored', out)
  result = _load(out)
  assert int(result['replicas']) == 2
  np.testing.assert_array_equal(result['local_positions'], [[12, 13], [14, 15]])
  np.testing.assert_array_equal(single['local_positions'], [[12, 13, 14, 15]])
  _assert_same_run(result, single)


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def test_multi_worker_two_local_processes_equals_single_device(tmp_path, single):
  workers = [f'localhost:{p}' for p in _free_ports(2)]
  procs = []
  for index in range(2):
    tf_config = json.dumps({'cluster': {'worker': workers}, 'task': {'type': 'worker', 'index': index}})
    procs.append(_run('multi_worker', tmp_path / f'worker{index}.npz', env={'TF_CONFIG': tf_config}, wait=False))
  for proc in procs:
    try:
      output, _ = proc.communicate(timeout=300)
    finally:
      proc.kill()
    assert proc.returncode == 0, output[-3000:]
  chief = _load(tmp_path / 'worker0.npz')
  other = _load(tmp_path / 'worker1.npz')
  assert int(chief['replicas']) == 2
  # Each worker's input pipeline feeds only its own replica, with the global layout.
  np.testing.assert_array_equal(chief['local_positions'], [[12, 13]])
  np.testing.assert_array_equal(other['local_positions'], [[14, 15]])
  _assert_same_run(chief, single)

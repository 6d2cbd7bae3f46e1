"""The continual experiment: learning on real MNIST, run-directory contract, resume, bad input, baselines."""
import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from wtl_tf import modulation
from wtl_tf.data import continual as continual_data
from wtl_tf.experiments import continual
from wtl_tf.learners.continual import baselines
from wtl_tf.learners.continual.lamaml import LaMAML
from wtl_tf.models.mlp import mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_tasks(num_tasks=3, n=60, seed=0):
  """Linearly separable 16-pixel 'images' per task, a different pixel permutation per task."""
  rng = np.random.default_rng(seed)
  centers = rng.integers(0, 2, (4, 16)) * 255.0  # Binary prototypes: easy to separate.
  def draw(k):
    y = rng.integers(0, 4, k)
    return np.clip(centers[y] + rng.normal(0, 40, (k, 16)), 0, 255).astype(np.uint8), y
  tasks = []
  for t in range(num_tasks):
    perm = rng.permutation(16)
    (tx, ty), (vx, vy) = draw(n), draw(200)
    tasks.append(continual_data.Task(f'perm {t}', tx[:, perm], ty, vx[:, perm], vy))
  return tasks


def _lamaml(model, seed, batch_size=10):
  return LaMAML(model, modulation=modulation.ScaledBinaryMask(step_size=0.15), memories=20, seed=seed,
                batch_size=batch_size, jit_compile=False)


def _train(tmp, tasks, factory=_lamaml, seed=0, eval_tasks='all'):
  learner = continual.build_learner(factory, tasks, lambda **kw: mlp(hidden_sizes=(32, 32), **kw), seed, 10)
  return continual.train_one('x', learner, tasks, str(tmp), 'synthetic', seed, 1, 10, 2, False, eval_tasks)


def test_run_directory_contract(tmp_path):
  result = _train(tmp_path, synthetic_tasks())
  for key in ('setting', 'learner', 'dataset', 'seed', 'sparsity', 'ra', 'bti', 'acc_matrix'):
    assert key in result
  assert result['setting'] == 'continual' and np.array(result['acc_matrix']).shape == (3, 3)
  assert 0 <= result['ra'] <= 1 and 'overall' in result['sparsity'] and 'fc1/kernel' in result['sparsity']
  records = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert {'step', 'split', 'loss', 'accuracy', 'sparsity'} <= set(records[0])
  assert [r['task'] for r in records if r['split'] == 'eval'] == [0, 1, 2]
  assert os.listdir(tmp_path / 'tensorboard') and (tmp_path / 'sparsity.png').stat().st_size > 1000
  assert json.load(open(tmp_path / 'results.json')) == json.loads(json.dumps(result))


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
  tasks = synthetic_tasks()
  reference = _train(tmp_path / 'a', tasks)
  calls = {'n': 0}
  original = LaMAML.observe
  def crashing(self, *args, **kwargs):
    calls['n'] += 1
    if calls['n'] == 9:  # In the middle of task 1 (6 batches per task).
      raise KeyboardInterrupt
    return original(self, *args, **kwargs)
  monkeypatch.setattr(LaMAML, 'observe', crashing)
  with pytest.raises(KeyboardInterrupt):
    _train(tmp_path / 'b', tasks)
  monkeypatch.setattr(LaMAML, 'observe', original)
  assert json.load(open(tmp_path / 'b' / 'checkpoints' / 'last.json'))['tasks_done'] == 1
  resumed = _train(tmp_path / 'b', tasks)
  assert resumed['acc_matrix'] == reference['acc_matrix']
  assert resumed['sparsity'] == reference['sparsity']


def test_testing_fewer_tasks_keeps_the_learner_and_the_scores(tmp_path):
  tasks = synthetic_tasks(num_tasks=4)
  full = _train(tmp_path / 'all', tasks)
  acc = np.array(full['acc_matrix'], np.float64)
  assert not np.isnan(acc).any()
  for mode, untested in (('seen', np.triu_indices(4, 1)), ('diagonal', np.nonzero(~np.eye(4, dtype=bool)))):
    cheap = _train(tmp_path / mode, tasks, eval_tasks=mode)
    got = np.array(cheap['acc_matrix'], np.float64)
    mask = np.zeros((4, 4), bool)
    mask[untested] = True
    mask[-1] = False  # The last row is always complete.
    assert np.isnan(got[mask]).all() and not np.isnan(got[~mask]).any(), (mode, got)
    np.testing.assert_array_equal(got[~mask], acc[~mask])  # Testing never changed what was learned.
    assert (cheap['ra'], cheap['bti']) == (full['ra'], full['bti'])
    assert cheap['sparsity'] == full['sparsity']
  assert json.load(open(tmp_path / 'diagonal' / 'results.json'))['acc_matrix'][0][1] is None


def test_unknown_eval_tasks_is_a_config_error(tmp_path):
  with pytest.raises(continual.ConfigError, match='eval_tasks must be one of all, seen, diagonal'):
    continual.run_continual('/nonexistent', benchmark=None, learners={'x': None}, eval_tasks='upper')
  with pytest.raises(continual.ConfigError, match="got 'upper'"):
    continual.train_one('x', None, [], str(tmp_path), 'synthetic', 0, 1, 10, 2, False, 'upper')
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('factory', [
    lambda model, seed, batch_size: baselines.OnlineSGD(model, lr=0.1, seed=seed, batch_size=batch_size),
    lambda model, seed, batch_size: baselines.ExperienceReplay(model, seed=seed, batch_size=batch_size),
    lambda model, seed, batch_size: baselines.GEM(model, seed=seed, batch_size=batch_size, memories_per_task=20),
    lambda model, seed, batch_size: baselines.MER(model, lr=0.1, beta=0.3, seed=seed, memories=50, steps=2),
], ids=['baseline', 'er', 'gem', 'mer'])
def test_baselines_learn(tmp_path, factory):
  result = _train(tmp_path, synthetic_tasks(n=200), factory=factory)
  acc = np.array(result['acc_matrix'])
  assert np.diag(acc).mean() > 0.6, acc  # Chance is 0.25.
  assert result['sparsity'] == {'overall': 0.0}


def test_gem_projection_is_the_closest_feasible_gradient():
  from scipy.optimize import minimize  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  g, memory = rng.normal(size=8), rng.normal(size=(3, 8))
  memory[0] = -g + 0.1 * rng.normal(size=8)  # Guarantees a violated constraint.
  projected = baselines.project_gradient(g, memory, margin=0.0, eps=0.0)
  assert np.all(memory @ projected >= -1e-8)
  best = minimize(lambda v: np.sum((v - g) ** 2), g, constraints={'type': 'ineq', 'fun': lambda v: memory @ v},
                  method='SLSQP', options={'ftol': 1e-12})
  np.testing.assert_allclose(projected, best.x, atol=1e-5)


def test_learns_real_mnist_permutations(data_root):
  from pipelines.datasets import mnist  # pylint: disable=g-import-not-at-top
  train_x, train_y = mnist.load_split(os.path.join(data_root, 'mnist'), 'train', 'mnist')
  test_x, test_y = mnist.load_split(os.path.join(data_root, 'mnist'), 'test', 'mnist')
  tasks = continual_data.build_tasks('permutations', train_x, train_y, test_x[:2000], test_y[:2000], num_tasks=3,
                                     samples_per_task=300, seed=0)
  learner = continual.build_learner(lambda model, seed, batch_size: LaMAML(model, seed=seed, jit_compile=False),
                                    tasks, mlp, 0, 10)
  result = continual.train_one('la_maml', learner, tasks, '/tmp/_unused' if False else os.path.join(
      os.environ.get('TMPDIR', '/tmp'), f'wtl_mnist_{os.getpid()}'), 'mnist_permutations', 0, 1, 10, 10, False)
  acc = np.array(result['acc_matrix'])
  # 300 samples of a permuted task already give far above chance (0.1); earlier tasks are partly retained.
  assert np.diag(acc).min() > 0.6, acc
  assert acc[-1, 0] > 0.3, acc


def _write_idx(path, array):
  header = struct.pack('>BBBB', 0, 0, 8, array.ndim) + struct.pack('>' + 'I' * array.ndim, *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope='module')
def tiny_mnist(tmp_path_factory):
  raw = tmp_path_factory.mktemp('raw_mnist')
  rng = np.random.default_rng(0)
  for split, n in (('train', 120), ('t10k', 40)):
    _write_idx(raw / f'{split}-images-idx3-ubyte.gz', rng.integers(0, 255, (n, 28, 28)))
    _write_idx(raw / f'{split}-labels-idx1-ubyte.gz', np.arange(n) % 10)
  return raw


def _cli(tmp_path, raw, *params, records=None):
  records = records or tmp_path / 'records'
  args = [sys.executable, '-m', 'wtl_tf.main', '--gin_file=gin/continual/rotations_la_maml.gin',
          f'--workdir={tmp_path / "run"}', f'--gin_param=Benchmark.raw_dir="{raw}"',
          f'--gin_param=Benchmark.records_dir="{records}"', '--gin_param=run_continual.show_progress=False',
          '--gin_param=Benchmark.num_tasks=2', '--gin_param=Benchmark.samples_per_task=20'] + [
              f'--gin_param={p}' for p in params]
  return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.beam
def test_cli_runs_and_rejects_bad_input(tmp_path, tiny_mnist):
  ok = _cli(tmp_path, tiny_mnist)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert json.load(open(tmp_path / 'run' / 'results.json'))['num_tasks'] == 2
  assert (tmp_path / 'run' / 'operative_config.gin').exists()
  for params, message in ((['la_maml/LaMAML.glances=0'], 'glances'),
                          (['la_maml/Relu.step_size=-0.1'], 'step_size'),
                          (['Benchmark.samples_per_task=500'], 'only 120'),
                          (['Benchmark.raw_dir="/nonexistent"', f'Benchmark.records_dir="{tmp_path}/none"'],
                           'not found in /nonexistent')):
    out = _cli(tmp_path / 'bad', tiny_mnist, *params, records=tmp_path / 'records')  # Converted once, above.
    assert out.returncode == 2, (params, out.stderr[-2000:])
    assert message in out.stderr and 'Traceback' not in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / 'bad' / 'run' / 'results.json').exists()

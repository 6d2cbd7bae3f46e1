"""The online experiment (OSAKA): run-directory contract, learning, resume, the shared pre-training cache, bad input,
the Table-6 gin rows, and (slow) real data."""
import functools
import glob
import json
import os
import subprocess
import sys
import types

import gin
import numpy as np
import pytest
from PIL import Image

from pipelines import main as pipeline_main
from wtl_tf import inner_loop, main, modulation, optimizers
from wtl_tf.data import records
from wtl_tf.experiments import online, online_pretrain
from wtl_tf.learners.online.cmaml import ContinualMAML
from wtl_tf.learners.online.baselines import OnlineAdam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEAM_ARGS = ['--direct_running_mode=in_memory', '--direct_num_workers=1']
LAYOUTS = {'omniglot': 30, 'mnist': 10, 'fashion_mnist': 10}  # Classes; 20 images each.
PRETRAINING = online_pretrain.Pretraining(meta_batch_size=2, max_epochs=2, patience=0, batches_per_epoch=3,
                                          val_batches=2, train_classes=(0, 20), val_classes=(20, 30))
MODEL = functools.partial(online.osaka_convnet, hidden_size=16)


def write_learnable_tree(root, num_classes, seed):
  """28x28 grey PNGs: a blocky binary prototype per class plus noise, so a few shots identify the class."""
  rng = np.random.default_rng(seed)
  for c in range(num_classes):
    prototype = np.kron(rng.integers(0, 2, (7, 7)), np.ones((4, 4))) * 220.0
    class_dir = os.path.join(root, 'train', f'c{c:03d}')
    os.makedirs(class_dir)
    for i in range(20):
      pixels = np.clip(prototype + rng.normal(0, 40, (28, 28)), 0, 255).astype(np.uint8)
      Image.fromarray(pixels).save(os.path.join(class_dir, f'{i:03d}.png'))


@pytest.fixture(scope='module')
def specs(tmp_path_factory):
  root = tmp_path_factory.mktemp('osaka_learnable')
  out = {}
  for seed, (name, classes) in enumerate(LAYOUTS.items()):
    write_learnable_tree(str(root / name), classes, seed)
    pipeline_main.run('folder', str(root / name), str(root / f'{name}_records'), beam_args=BEAM_ARGS,
                      options={'image_size': 0, 'channels': 1}, quiet=True)
    out[name] = str(root / f'{name}_records')
  return out


def c_maml_factory(**overrides):
  kwargs = dict(modulation=modulation.PerTensorStepSize(step_size=0.1),
                inner_loop=inner_loop.InnerLoop(num_steps=2, first_order=True, adapt_bn=False),
                optimizer=functools.partial(optimizers.adam, 1e-3), gamma=1.5, update_lambda=0.25, name='c_maml')
  kwargs.update(overrides)
  return functools.partial(ContinualMAML, **kwargs)


def run(specs, workdir, cache, learner=None, **kwargs):
  settings = dict(learner=learner or c_maml_factory(), p=0.9, num_steps=60, seed=0, pretraining=PRETRAINING,
                  pretrain_cache=str(cache), model_fn=MODEL, omniglot_records=specs['omniglot'],
                  mnist_records=specs['mnist'], fashion_mnist_records=specs['fashion_mnist'], log_every=10,
                  checkpoint_every=20, show_progress=False)
  settings.update(kwargs)
  return online.run_online(str(workdir), **settings)


@pytest.fixture(scope='module')
def reference(specs, tmp_path_factory):
  base = tmp_path_factory.mktemp('online_runs')
  return base, run(specs, base / 'reference', base / 'pretrained')


def test_run_directory_contract_and_learning(reference):
  base, result = reference
  workdir = base / 'reference'
  for key in ('setting', 'learner', 'dataset', 'seed', 'sparsity', 'cumulative_accuracy', 'per_dataset',
              'num_steps'):
    assert key in result
  assert result['setting'] == 'online' and result['num_steps'] == 60 and result['learner'] == 'c_maml'
  assert set(result['per_dataset']) == {'omniglot', 'mnist', 'fashion_mnist'}
  assert 'overall' in result['sparsity'] and 'conv1/kernel' in result['sparsity']
  stream = np.load(workdir / 'stream.npz')
  assert len(stream['accuracy']) == 60 and stream['accuracy'][0] == 0.0  # Step 0 scores 0, as in OSAKA.
  assert result['cumulative_accuracy'] == pytest.approx(stream['accuracy'].mean())
  for m, name in enumerate(('omniglot', 'mnist', 'fashion_mnist')):
    if np.any(stream['modes'] == m):
      assert result['per_dataset'][name] == pytest.approx(stream['accuracy'][stream['modes'] == m].mean())
  # Learning: chance is 0.1; prolonged adaptation on a task's repeated classes gets far above it.
  assert result['cumulative_accuracy'] > 0.5, result['cumulative_accuracy']
  assert result['meta_updates'] >= 1 and result['boundary_detection']['true_switches'] >= 3
  assert result['pretraining']['epochs'] >= 1 and not result['pretraining']['reused']
  assert set(result['timings_seconds']) == {'evaluation', 'adaptation', 'detection', 'meta_update', 'buffer'}
  records_ = [json.loads(line) for line in open(workdir / 'metrics.jsonl', encoding='utf-8')]
  stream_records = [r for r in records_ if r['split'] == 'stream']
  assert [r['step'] for r in stream_records] == list(range(10, 61, 10))
  assert {'step', 'split', 'loss', 'accuracy', 'sparsity'} <= set(stream_records[0])
  assert 'overall' in stream_records[0]['sparsity'] and 'step_sizes' in stream_records[0]
  assert any(r['split'] == 'pretrain' for r in records_)
  assert os.listdir(workdir / 'tensorboard') and (workdir / 'online_accuracy.png').stat().st_size > 10000
  assert json.load(open(workdir / 'results.json', encoding='utf-8')) == json.loads(json.dumps(result))


def test_interrupted_stream_resumes_to_the_same_result(specs, reference, monkeypatch):
  base, expected = reference
  calls = {'n': 0}
  original = ContinualMAML.observe

  def crashing(self, *args, **kwargs):
    calls['n'] += 1
    if calls['n'] == 35:  # After the checkpoint at step 20, before the one at 40.
      raise KeyboardInterrupt
    return original(self, *args, **kwargs)

  monkeypatch.setattr(ContinualMAML, 'observe', crashing)
  with pytest.raises(KeyboardInterrupt):
    run(specs, base / 'resumed', base / 'pretrained')
  monkeypatch.setattr(ContinualMAML, 'observe', original)
  assert json.load(open(base / 'resumed' / 'checkpoints' / 'last.json', encoding='utf-8'))['step'] == 20
  resumed = run(specs, base / 'resumed', base / 'pretrained')
  assert resumed['pretraining']['reused']  # The interrupted run took the cached pre-trained model.
  assert resumed['resumed_at_step'] == 20
  np.testing.assert_array_equal(np.load(base / 'resumed' / 'stream.npz')['accuracy'],
                                np.load(base / 'reference' / 'stream.npz')['accuracy'])
  for key in ('cumulative_accuracy', 'per_dataset', 'sparsity', 'meta_updates', 'step_sizes'):
    assert resumed[key] == expected[key], key
  again = run(specs, base / 'resumed', base / 'pretrained')  # A finished run just returns its results.
  assert again == json.loads(json.dumps(resumed))


def test_pretraining_is_cached_per_setting_and_resumes(specs, tmp_path, monkeypatch):
  spec = records.DatasetSpec.load(specs['omniglot'])
  settings = online_pretrain.Pretraining(meta_batch_size=2, max_epochs=3, patience=5, batches_per_epoch=2,
                                         val_batches=1, train_classes=(0, 20), val_classes=(20, 30))
  learner = c_maml_factory()(model_fn=MODEL)
  full = online_pretrain.pretrain(learner, spec, settings, str(tmp_path / 'a'), show_progress=False)
  assert len(full['history']) == 3 and full['best_epoch'] is not None
  best = [v.numpy() for v in learner.theta]
  original = ContinualMAML.pretrain_step
  calls = {'n': 0}

  def crashing(self, episodes):
    calls['n'] += 1
    if calls['n'] == 4:  # The first step of epoch 2 (2 steps per epoch) ...
      raise KeyboardInterrupt
    return original(self, episodes)

  other = c_maml_factory()(model_fn=MODEL)
  monkeypatch.setattr(ContinualMAML, 'pretrain_step', crashing)
  with pytest.raises(KeyboardInterrupt):
    online_pretrain.pretrain(other, spec, settings, str(tmp_path / 'b'), show_progress=False)
  monkeypatch.setattr(ContinualMAML, 'pretrain_step', original)
  resumed_learner = c_maml_factory()(model_fn=MODEL)
  resumed = online_pretrain.pretrain(resumed_learner, spec, settings, str(tmp_path / 'b'), show_progress=False)
  assert [h['val_accuracy'] for h in resumed['history']] == [h['val_accuracy'] for h in full['history']]
  for a, b in zip(best, resumed_learner.theta):  # ... resumes after epoch 1 and ends with the same best model.
    np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-6)
  # Another setting (here the inner step count) is another cache entry; the same one is reused.
  changed = c_maml_factory(inner_loop=inner_loop.InnerLoop(num_steps=1, adapt_bn=False))(model_fn=MODEL)
  assert online_pretrain.cache_dir('c', changed, settings, spec) != online_pretrain.cache_dir('c', learner, settings,
                                                                                               spec)
  again = online_pretrain.pretrain(c_maml_factory()(model_fn=MODEL), spec, settings, str(tmp_path / 'a'),
                                   show_progress=False)
  assert again['reused']


def test_pretraining_cache_key_covers_every_modulation_attribute():
  """ScaledBinaryMask's `convention` (a subclass field that repr() leaves out) is part of the cache key."""
  omniglot = types.SimpleNamespace(classes=[None] * 30, raw={'options': {'split': 'osaka'}})

  def key(convention):
    mask = modulation.ScaledBinaryMask(step_size=0.1, convention=convention)
    learner = c_maml_factory(modulation=mask, mask_optimizer=functools.partial(optimizers.adam, 1e-2))(
        model_fn=MODEL)
    return online_pretrain.cache_dir('cache', learner, PRETRAINING, omniglot)

  assert key('paper') == key('paper')  # Separately built learners of one configuration share the cache ...
  assert key('paper') != key('reference')  # ... another convention pre-trains its own model.


# MAML's second-order pre-training is the slow row (-m slow).
@pytest.mark.parametrize('name', ['sparse_c_maml', pytest.param('maml', marks=pytest.mark.slow), 'online_adam'])
def test_variants_and_baselines_run(specs, tmp_path, name):
  factories = {
      'sparse_c_maml': c_maml_factory(modulation=modulation.ScaledBinaryMask(step_size=0.1),
                                      mask_optimizer=functools.partial(optimizers.adam, 1e-2), name=name),
      'maml': c_maml_factory(modulation=modulation.Identity(step_size=0.1), meta_learning=False, prolonged=False,
                             gamma=None, name=name),
      'online_adam': functools.partial(OnlineAdam, optimizer=functools.partial(optimizers.adam, 5e-3), name=name),
  }
  pretraining = None if name == 'online_adam' else PRETRAINING
  result = run(specs, tmp_path / name, tmp_path / 'pretrained', learner=factories[name], num_steps=25,
               pretraining=pretraining)
  assert result['learner'] == name and 0.0 <= result['cumulative_accuracy'] <= 1.0
  if name == 'sparse_c_maml':
    assert 0.0 < result['sparsity']['overall'] < 1.0 and 'head/kernel' in result['sparsity']
  else:
    assert result['meta_updates'] == 0 and result['sparsity']['overall'] == 0.0
  assert (result['pretraining'] is None) == (name == 'online_adam')


def test_bad_input_fails_before_any_work(specs, tmp_path):
  with pytest.raises(ValueError, match='stream is empty'):
    run(specs, tmp_path / 'a', tmp_path / 'cache', num_steps=0)
  for p in (1.5, -0.1):
    with pytest.raises(ValueError, match=r'p must be a probability in \[0, 1\]'):
      run(specs, tmp_path / 'a', tmp_path / 'cache', p=p)
  with pytest.raises(records.DataError, match='needs mnist'):
    run(specs, tmp_path / 'a', tmp_path / 'cache', mnist_records=str(tmp_path / 'no_mnist_here'))
  assert not os.path.exists(tmp_path / 'cache') and not os.path.exists(tmp_path / 'a' / 'results.json')


def test_bad_input_on_the_command_line_is_one_line(tmp_path):
  env = dict(os.environ, WTL_DATA_DIR=str(tmp_path / 'nothing'), WTL_RECORDS_DIR=str(tmp_path / 'records'))
  for param, message in (('run_online.p=1.5', 'p must be a probability'),
                         ('run_online.num_steps=0', 'the stream is empty'),
                         ('run_online.seed=0', 'the OSAKA stream needs omniglot')):  # No data anywhere.
    out = subprocess.run([sys.executable, '-m', 'wtl_tf.main', '--gin_file=online/p098_c_maml.gin',
                          f'--gin_param={param}', f'--workdir={tmp_path / "run"}'], capture_output=True, text=True,
                         cwd=ROOT, timeout=300, env=env)
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and message in errors[0] and 'Traceback' not in out.stderr, out.stderr


ROWS = sorted(glob.glob(os.path.join(ROOT, 'gin', 'online', 'p0*_*.gin')))


def test_table6_rows_bind_the_reference_settings():
  expected = {  # (K, first order, outer lr, gamma, lambda, meta-batch, patience), docs/ALGORITHMS.md 5.4 / OSAKA.
      'p098_c_maml': (8, True, 1e-4, 2.5, 0.25, 4, 10), 'p090_c_maml': (16, True, 5e-4, 2.0, 0.25, 8, 10),
      'p098_maml': (16, False, 1e-3, None, 0.25, 8, 10), 'p090_anil': (16, False, 5e-3, None, 0.25, 4, 20),
      'p098_fine_tuning': (1, True, 1e-3, None, None, 2, 5)}
  assert len(ROWS) == 14
  for path in ROWS:
    row = os.path.basename(path)[:-4]
    gin.clear_config()
    main.parse_config([path], [])
    learner = gin.query_parameter('run_online.learner').scoped_configurable_fn(model_fn=MODEL, seed=0)
    pretraining = gin.query_parameter('run_online.pretraining')
    pretraining = pretraining.scoped_configurable_fn() if pretraining is not None else None
    assert learner.name == row[5:] and gin.query_parameter('run_online.p') == float(row[1:4]) / 100
    assert (pretraining is None) == (row.endswith('online_adam'))
    if row in expected:
      k, first_order, lr, gamma, lam, batch, patience = expected[row]
      assert (learner.inner_loop.num_steps, learner.inner_loop.first_order) == (k, first_order)
      assert float(learner.theta_optimizer.learning_rate) == pytest.approx(lr)
      assert not learner.inner_loop.adapt_bn
      if isinstance(learner, ContinualMAML):
        assert learner.gamma == gamma and learner.meta_learning == (gamma is not None)
        if learner.meta_learning:
          assert learner.update_lambda == lam
      assert (pretraining.meta_batch_size, pretraining.patience) == (batch, patience)
  gin.clear_config()


@pytest.mark.slow
def test_real_data_c_maml_learns(data_root, tmp_path):
  """Real Omniglot/MNIST/Fashion-MNIST: a 1-epoch pre-training of 20 meta-batches, then 300 stream steps."""
  del data_root
  settings = online_pretrain.Pretraining(meta_batch_size=4, max_epochs=1, batches_per_epoch=20, val_batches=5)
  factory = c_maml_factory(inner_loop=inner_loop.InnerLoop(num_steps=8, first_order=True, adapt_bn=False),
                           optimizer=functools.partial(optimizers.adam, 1e-4), gamma=2.5)
  result = online.run_online(str(tmp_path / 'run'), learner=factory, p=0.98, num_steps=300, seed=0,
                             pretraining=settings, pretrain_cache=str(tmp_path / 'pretrained'),
                             show_progress=False)
  assert result['cumulative_accuracy'] > 0.75, result

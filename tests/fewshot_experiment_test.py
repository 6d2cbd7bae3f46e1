"""The few-shot experiment: run directory and results.json, model selection, exact resume, NaN stop, CLI."""
import functools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # disable_op_determinism is not exported.

from wtl_tf import modulation as M
from wtl_tf import inner_loop
from wtl_tf import optimizers
from wtl_tf import summaries
from wtl_tf.experiments import fewshot
from wtl_tf.data.fewshot import SyntheticData
from wtl_tf.errors import TrainingDiverged, UserError
from wtl_tf.learners.fewshot import FewShotLearner
from wtl_tf.models.conv4 import conv4

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (16, 16, 1)


def sparse_maml(**kwargs):
  return FewShotLearner(modulation=M.BinaryMask(step_size=0.4), inner_loop=inner_loop.InnerLoop(2),
                        theta_optimizer=functools.partial(optimizers.adam, 3e-3), name='sparse_maml', **kwargs)


def run(workdir, learner=sparse_maml, **overrides):
  kwargs = dict(data=SyntheticData(SHAPE, noise=1.5), learner=learner,
                model_fn=functools.partial(conv4, hidden_size=8), ways=5, shots=1, queries=5, meta_batch_size=2,
                epochs=3, batches_per_epoch=4, val_after=1, val_start=0, test_start=1, num_val_episodes=8,
                num_test_episodes=8, num_final_episodes=10, eval_batch_size=4,
                cross_domain={'shifted': SyntheticData(SHAPE, noise=1.5, seed=9, name='shifted')}, log_every=2,
                show_progress=False)
  kwargs.update(overrides)
  return fewshot.run_fewshot(str(workdir), **kwargs)


@pytest.fixture
def deterministic_ops():
  yield
  tf_config.disable_op_determinism()  # Process-wide: later tests (XLA) must not inherit it.


class Interrupted(Exception):
  pass


def interrupting(factory, after_steps):
  """A learner factory whose learner dies (like a killed process) at training call `after_steps` + 1."""

  def make(**kwargs):
    learner = factory(**kwargs)
    step, calls = learner.train_step, [0]

    def train_step(*args):
      calls[0] += 1
      if calls[0] > after_steps:
        raise Interrupted()
      return step(*args)
    learner.train_step = train_step
    return learner
  return make


def test_run_writes_the_run_directory_and_selects_by_validation(tmp_path):
  result = run(tmp_path)
  with open(tmp_path / 'results.json', encoding='utf-8') as f:
    assert json.load(f) == json.loads(json.dumps(result))
  assert result['setting'] == 'fewshot' and result['learner'] == 'sparse_maml' and result['dataset'] == 'synthetic'
  assert 0 <= result['test_accuracy'] <= 1 and result['test_accuracy_ci95'] > 0
  assert result['num_test_episodes'] == 10  # 10 episodes in batches of 4: the padding is dropped.
  assert set(result['cross_domain']) == {'shifted'} and 0 <= result['cross_domain']['shifted'] <= 1
  sparsity = result['sparsity']
  # ~50% initial sparsity (docs/ALGORITHMS.md 1.5).
  assert 'conv1/kernel' in sparsity and 0.3 < sparsity['overall'] < 0.7
  # Selection (docs/ALGORITHMS.md 3.3): a validation improvement after test_start is tested and checkpointed; the
  # last such one wins.
  history = result['validation']
  assert [h['epoch'] for h in history] == [1, 2, 3]
  best, expected = None, None
  for h in history:
    if best is None or h['val_accuracy'] > best:
      best = h['val_accuracy']
      if h['epoch'] > 1:
        expected = h
      else:
        assert 'test_accuracy' not in h
  assert result['best_val_accuracy'] == best
  assert result['best_epoch'] == (expected and expected['epoch'])
  assert result['checkpoint'] == ('best' if expected else 'last')
  assert os.path.exists(tmp_path / 'checkpoints' / 'best.npz') == bool(expected)
  if expected:
    assert result['test_accuracy_at_best_val']['accuracy'] == expected['test_accuracy']
  records = summaries.read_metrics(str(tmp_path / 'metrics.jsonl'))
  splits = [r['split'] for r in records]
  assert splits.count('train') == 6 and splits.count('val') == 3 and 'final_test' in splits
  assert 'cross_domain/shifted' in splits
  for r in records:
    assert {'step', 'split', 'loss', 'accuracy', 'sparsity'} <= set(r) and 'overall' in r['sparsity']
  events = tf.io.gfile.glob(str(tmp_path / 'tensorboard' / 'events*'))
  tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value}
  assert {'train/loss', 'train/accuracy', 'sparsity/overall', 'sparsity/conv2/kernel', 'S(m)/conv2/kernel',
          'm/conv2/kernel', 'val/accuracy'} <= tags
  assert os.path.exists(tmp_path / 'sparsity.png')
  # A finished run is not redone: rerunning returns the stored results.
  assert run(tmp_path, learner=interrupting(sparse_maml, 0)) == result


def test_killed_and_resumed_run_ends_with_identical_results(tmp_path, deterministic_ops):
  whole = run(tmp_path / 'whole', deterministic=True, checkpoint_every=3)
  for after in (7, 2):  # Mid-epoch after an intra-epoch checkpoint, then again after the resumed epoch's start.
    with pytest.raises(Interrupted):
      run(tmp_path / 'killed', learner=interrupting(sparse_maml, after), deterministic=True, checkpoint_every=3)
  with open(tmp_path / 'killed' / 'checkpoints' / 'last.json', encoding='utf-8') as f:
    assert json.load(f)['step'] == 8  # 7 steps, then 2 more after resuming at step 6 (checkpoint every 3).
  resumed = run(tmp_path / 'killed', deterministic=True, checkpoint_every=3)
  assert resumed == whole
  with open(tmp_path / 'whole' / 'results.json', 'rb') as a, open(tmp_path / 'killed' / 'results.json', 'rb') as b:
    assert a.read() == b.read()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):

  def diverging(**kwargs):
    learner = sparse_maml(**kwargs)
    step, calls = learner.train_step, [0]

    def train_step(*args):
      calls[0] += 1
      out = step(*args)
      return {'loss': tf.constant(math.nan), 'accuracy': out['accuracy']} if calls[0] == 6 else out
    learner.train_step = train_step
    return learner

  with pytest.raises(TrainingDiverged, match=r'meta-loss became nan at step 5 .*last good checkpoint'):
    run(tmp_path, learner=diverging)
  with open(tmp_path / 'checkpoints' / 'last.json', encoding='utf-8') as f:
    assert json.load(f)['step'] == 4  # The end of epoch 1; nothing after the NaN was saved.
  assert not os.path.exists(tmp_path / 'results.json')
  assert isinstance(TrainingDiverged('x'), UserError)  # main.py prints it as one line, exit code 2.


def test_cli_runs_a_gin_file_end_to_end(tmp_path):
  params = ['run_fewshot.epochs=2', 'run_fewshot.batches_per_epoch=2', 'run_fewshot.num_val_episodes=4',
            'run_fewshot.num_test_episodes=4', 'run_fewshot.num_final_episodes=4', 'run_fewshot.show_progress=False',
            'INNER_STEPS=1']
  out = subprocess.run([sys.executable, '-m', 'wtl_tf.main', '--gin_file=fewshot/sparse_maml_conv4_synthetic_5w1s.gin',
                        f'--workdir={tmp_path}'] + [f'--gin_param={p}' for p in params],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / 'results.json', encoding='utf-8') as f:
    result = json.load(f)
  assert result['setting'] == 'fewshot' and result['num_test_episodes'] == 4
  assert 'run_fewshot.epochs = 2' in (tmp_path / 'operative_config.gin').read_text()
  bad = subprocess.run([sys.executable, '-m', 'wtl_tf.main', '--gin_file=fewshot/sparse_maml_conv4_synthetic_5w1s.gin',
                        f'--workdir={tmp_path / "bad"}', '--gin_param=run_fewshot.meta_batch_size=0'],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert bad.returncode == 2 and 'meta_batch_size must be a positive int' in bad.stderr
  assert 'Traceback' not in bad.stderr


def test_mean_ci95():
  mean, ci = fewshot.mean_ci95([0.0, 1.0] * 50)
  assert mean == 0.5 and ci == pytest.approx(1.96 * np.std([0.0, 1.0] * 50, ddof=1) / 10)


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_identical_results(tmp_path):
  """A real kill -9 in the middle of training (slow: three CLI runs)."""
  params = ['run_fewshot.epochs=3', 'run_fewshot.batches_per_epoch=6', 'run_fewshot.num_val_episodes=8',
            'run_fewshot.num_test_episodes=8', 'run_fewshot.num_final_episodes=8', 'run_fewshot.show_progress=False',
            'run_fewshot.deterministic=True', 'run_fewshot.checkpoint_every=1', 'INNER_STEPS=2']

  def command(workdir):
    return [sys.executable, '-m', 'wtl_tf.main', '--gin_file=fewshot/sparse_maml_conv4_synthetic_5w1s.gin',
            f'--workdir={workdir}'] + [f'--gin_param={p}' for p in params]

  whole = subprocess.run(command(tmp_path / 'whole'), capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert whole.returncode == 0, whole.stderr[-3000:]
  proc = subprocess.Popen(command(tmp_path / 'killed'), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  last = tmp_path / 'killed' / 'checkpoints' / 'last.json'
  try:
    while proc.poll() is None:
      if last.exists() and json.loads(last.read_text())['step'] >= 4:
        break
  finally:
    proc.kill()
    proc.wait()
  assert not (tmp_path / 'killed' / 'results.json').exists(), 'the run finished before it could be killed'
  resumed = subprocess.run(command(tmp_path / 'killed'), capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resuming at step' in resumed.stdout
  assert (tmp_path / 'whole' / 'results.json').read_bytes() == (tmp_path / 'killed' / 'results.json').read_bytes()

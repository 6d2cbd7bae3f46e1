"""The Python API (wtl_tf/api.py): the README example learns, user models of every kind train, bad episodes are one
clear error, and `import wtl_tf` stays light."""
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import wtl_tf
from wtl_tf.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example() -> str:
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    text = f.read()
  return re.search(r'<!-- api-example -->\n```python\n(.*?)```\n<!-- /api-example -->', text, re.S).group(1)


def test_readme_example_meta_learns_on_unseen_classes():
  namespace = {}
  exec(compile(readme_example(), 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  before, after = namespace['before'], namespace['result']['accuracy']
  # 200 test tasks x 15 queries: the 95% CI of the accuracy is about +-1 point (printed by evaluate), so a 30-point
  # margin over chance (20%) and a 20-point gain over the un-meta-trained start (~43%: the classes are Gaussian
  # clouds, five SGD steps already help) are far outside noise. With the meta-update switched off the learner
  # stays at the start.
  assert after >= 0.5 and after >= before + 0.2, (before, after)
  assert namespace['result']['ci95'] < 0.02
  assert 0.0 <= namespace['learner'].sparsity()['overall'] <= 1.0


class SubclassedNet(keras.Model):
  """A user's subclassed model with BatchNorm."""

  def __init__(self, ways):
    super().__init__()
    self.hidden = keras.layers.Dense(32)
    self.norm = keras.layers.BatchNormalization()
    self.out = keras.layers.Dense(ways)

  def call(self, x, training=False):
    return self.out(tf.nn.relu(self.norm(self.hidden(x), training=training)))


def _episodes(n, ways=3, shots=2, queries=4, dim=6, seed=0):
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(n, ways, 1, dim)) * 2
  def draw(k):
    x = (means + rng.normal(size=(n, ways, k, dim))).reshape(n, ways * k, dim).astype(np.float32)
    return x, np.broadcast_to(np.repeat(np.arange(ways), k), (n, ways * k)).astype(np.int64)
  return (*draw(shots), *draw(queries))


def test_subclassed_model_from_a_dataset_with_a_modulation_object():
  sx, sy, qx, qy = _episodes(16)
  dataset = tf.data.Dataset.from_tensor_slices({'support_x': sx, 'support_y': sy, 'query_x': qx, 'query_y': qy})
  learner = wtl_tf.fewshot_learner(SubclassedNet(3), modulation=wtl_tf.BinaryMask(step_size=0.2), inner_steps=2,
                                   input_shape=(6,), name='mine')
  masks_before = [m.numpy().copy() for m in learner.mask_logits]
  theta_before = [t.numpy().copy() for t in learner.theta]
  history = wtl_tf.meta_train(learner, dataset, steps=5, meta_batch_size=4, show_progress=False)
  assert len(history) == 5 and all(np.isfinite(h['loss']) for h in history)
  assert any(not np.array_equal(a, m.numpy()) for a, m in zip(masks_before, learner.mask_logits))
  assert any(not np.array_equal(a, t.numpy()) for a, t in zip(theta_before, learner.theta))
  assert set(learner.sparsity()) == {i.name for i in learner.infos} | {'overall'}  # BatchNorm included.
  assert sum(i.is_bn for i in learner.infos) == 2
  result = wtl_tf.evaluate(learner, (sx, sy, qx, qy))
  assert result['per_episode'].shape == (16,)
  logits = wtl_tf.adapt_and_predict(learner, sx[0], sy[0], qx[0])
  assert logits.shape == (12, 3)


@pytest.mark.parametrize('name', sorted(wtl_tf.LEARNERS))
def test_every_named_modulation_trains_a_step(name):
  model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                            keras.layers.ReLU(), keras.layers.Dense(3)])
  learner = wtl_tf.fewshot_learner(model, modulation=name, inner_steps=1)
  history = wtl_tf.meta_train(learner, _episodes(4), steps=1, meta_batch_size=2, show_progress=False)
  assert np.isfinite(history[0]['loss'])
  assert learner.inner_loop.first_order == (name != 'maml')


@pytest.mark.parametrize('change, message', [
    (lambda e: (e[0], e[1] + 3, e[2], e[3]), r'labels must lie in \[0, 3\)'),
    (lambda e: (e[0][:, :0], e[1][:, :0], e[2], e[3]), 'the support sets are empty'),
    (lambda e: (e[0][:2], e[1], e[2], e[3]), 'same non-zero number of episodes'),
    (lambda e: (e[0], e[1][:, :1], e[2], e[3]), 'support inputs'),
    (lambda e: {'support_x': e[0]}, 'missing support_y, query_x, query_y'),
])
def test_bad_episodes_are_one_clear_error(change, message):
  learner = wtl_tf.fewshot_learner(keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)]), inner_steps=1)
  with pytest.raises(ConfigError, match=message):
    wtl_tf.meta_train(learner, change(_episodes(4)), steps=1, meta_batch_size=2, show_progress=False)


def test_unknown_modulation_and_unbuilt_model_are_clear():
  with pytest.raises(ConfigError, match='unknown modulation'):
    wtl_tf.get_modulation('sparse_mammal')
  with pytest.raises(ConfigError, match='input_shape'):
    wtl_tf.fewshot_learner(SubclassedNet(3))


def test_import_is_light_and_lists_the_api():
  out = subprocess.run([sys.executable, '-c', 'import sys, wtl_tf; print("tensorflow" in sys.modules, '
                        'sorted(dir(wtl_tf))[:3], wtl_tf.BinaryMask.__name__)'], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith('False') and 'BinaryMask' in out.stdout

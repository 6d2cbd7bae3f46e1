"""OSAKA stream (docs/ALGORITHMS.md 5.1): switch and mode statistics, task contents, value ranges, determinism."""
import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from pipelines import main as pipeline_main
from wtl_tf.data import osaka
from wtl_tf.data import records

BEAM_ARGS = ['--direct_running_mode=in_memory', '--direct_num_workers=1']
# Omniglot-like: classes in two splits, 20 images each. MNIST-like: unequal classes (12 .. 21), FMNIST-like: 15 each.
LAYOUTS = {'omniglot': {'test': [20] * 10, 'train': [20] * 15},
           'mnist': {'train': [12 + c for c in range(10)]},
           'fashion_mnist': {'train': [15] * 10}}


def write_tree(root, layout):
  """28x28 grey PNGs; pixel (0, 0) = class id, (0, 1) = image index, (0, 2) = 255, (0, 3) = 0, rest random."""
  class_id = 0
  for split in sorted(layout):
    for c, count in enumerate(layout[split]):
      class_dir = os.path.join(root, split, f'c{c:03d}')
      os.makedirs(class_dir, exist_ok=True)
      for i in range(count):
        pixels = np.random.default_rng(1000 * class_id + i).integers(0, 256, (28, 28), dtype=np.uint8)
        pixels[0, :4] = class_id, i, 255, 0
        Image.fromarray(pixels).save(os.path.join(class_dir, f'{i:03d}.png'))
      class_id += 1


@pytest.fixture(scope='module')
def specs(tmp_path_factory):
  root = tmp_path_factory.mktemp('osaka')
  out = {}
  for name, layout in LAYOUTS.items():
    write_tree(str(root / name), layout)
    pipeline_main.run('folder', str(root / name), str(root / f'{name}_records'), beam_args=BEAM_ARGS,
                      options={'image_size': 0, 'channels': 1}, quiet=True)
    out[name] = records.DatasetSpec.load(str(root / f'{name}_records'))
  return out


def stream(specs, **kwargs):
  return osaka.OsakaStream(specs['omniglot'], specs['mnist'], specs['fashion_mnist'], **kwargs)


def collect(ds):
  return [osaka.OsakaStep(*(x.numpy() for x in step)) for step in ds]


@pytest.mark.parametrize('p', [0.98, 0.9])
def test_task_switches_at_rate_one_minus_p(specs, p):
  s = stream(specs, seed=1, p=p, num_steps=10000)
  assert s.task_switch[0]
  rate = s.task_switch[1:].mean()
  sigma = np.sqrt((1 - p) * p / 9999)
  assert abs(rate - (1 - p)) < 5 * sigma, rate
  np.testing.assert_array_equal(s.task_index, np.cumsum(s.task_switch) - 1)


def test_modes_are_drawn_with_probabilities_half_quarter_quarter(specs):
  s = stream(specs, seed=2, p=0.0, num_steps=8000)  # p = 0: every step is a new task.
  assert s.task_switch.all()
  freq = np.bincount(s.task_modes(), minlength=3) / 8000
  np.testing.assert_allclose(freq, [0.5, 0.25, 0.25], atol=0.03)
  assert not stream(specs, seed=2, p=1.0, num_steps=50).task_switch[1:].any()


def test_steps_hold_ten_classes_times_five_images_of_the_task(specs):
  s = stream(specs, seed=3, p=0.8, num_steps=400)
  steps = collect(s.dataset())
  assert len(steps) == 400
  min_mnist = min(LAYOUTS['mnist']['train'])
  duplicates, tasks = 0, {}
  for t, step in enumerate(steps):
    assert step.images.shape == (50, 28, 28, 1) and step.images.dtype == np.float32
    np.testing.assert_array_equal(step.labels, np.repeat(np.arange(10), 5))
    assert step.step == t and step.task_switch == s.task_switch[t] and step.task_index == s.task_index[t]
    assert len(set(step.class_ids)) == 10
    scale = 255.0 if step.mode == osaka.OMNIGLOT else 1.0
    codes = np.round(step.images[:, 0, :4, 0] * scale).astype(int)
    np.testing.assert_array_equal(codes[:, 0], np.repeat(step.class_ids, 5))  # Image j*5.. belongs to label j.
    np.testing.assert_array_equal(codes[:, 2:], [[255, 0]] * 50)
    if step.mode == osaka.OMNIGLOT:
      assert step.images.max() == 1.0 and step.images.min() == 0.0
    else:
      assert step.images.max() == 255.0 and np.array_equal(step.images, np.round(step.images))  # Raw 0-255.
    if step.mode == osaka.MNIST:
      assert codes[:, 1].max() < min_mnist  # Classes truncated to the smallest class.
    duplicates += sum(len(set(row)) < 5 for row in codes[:, 1].reshape(10, 5))
    first = tasks.setdefault(int(step.task_index), (int(step.mode), tuple(step.class_ids)))
    assert first == (step.mode, tuple(step.class_ids))  # Mode, classes and labels stay fixed within a task.
  assert duplicates > 100  # Drawn with replacement (P(a repeat among 5 of 20) ~ 0.58 per class).
  assert len(tasks) == s.task_index[-1] + 1 > 40
  by_mode = [[c for m, c in tasks.values() if m == mode] for mode in range(3)]
  assert all(len(c) > 3 for c in by_mode)
  assert any(list(c) != sorted(c) for c in by_mode[osaka.MNIST])  # Labels are a random permutation.
  assert len(set(by_mode[osaka.MNIST])) > 1
  omniglot_ids = {c for cs in by_mode[osaka.OMNIGLOT] for c in cs}
  assert omniglot_ids <= set(range(25)) and omniglot_ids & set(range(10)) and omniglot_ids & set(range(10, 25))


def test_scale_mnist_puts_every_mode_in_unit_range(specs):
  steps = collect(stream(specs, seed=4, p=0.5, num_steps=60, scale_mnist=True).dataset())
  assert {int(s.mode) for s in steps} == {0, 1, 2}
  assert all(0.0 <= s.images.min() and s.images.max() == 1.0 for s in steps)


def test_stream_is_a_function_of_seed_and_step(specs):
  a = collect(stream(specs, seed=5, p=0.9, num_steps=40).dataset())
  b = collect(stream(specs, seed=5, p=0.9, num_steps=40).dataset(start=17, num_parallel_calls=1, prefetch=0))
  for x, y in zip(a[17:], b):
    for u, v in zip(x, y):
      np.testing.assert_array_equal(u, v)
  c = collect(stream(specs, seed=6, p=0.9, num_steps=40).dataset())
  assert sum(np.array_equal(x.images, y.images) for x, y in zip(a, c)) == 0


def test_pretraining_tasks(specs):
  spec = specs['omniglot']
  ds = osaka.pretrain_dataset(spec, seed=7, class_range=(0, 20), num_episodes=30)
  episodes = [type(e)(*(x.numpy() for x in e)) for e in ds]
  again = next(iter(osaka.pretrain_dataset(spec, seed=7, class_range=(0, 20), start=29)))
  np.testing.assert_array_equal(again.query_images, episodes[29].query_images)
  seen = set()
  for e in episodes:
    assert e.support_images.shape == (50, 28, 28, 1) and e.query_images.shape == (150, 28, 28, 1)
    np.testing.assert_array_equal(e.support_labels, np.repeat(np.arange(10), 5))
    np.testing.assert_array_equal(e.query_labels, np.repeat(np.arange(10), 15))
    assert e.support_images.max() <= 1.0
    support = np.round(e.support_images[:, 0, :2, 0] * 255).astype(int)
    query = np.round(e.query_images[:, 0, :2, 0] * 255).astype(int)
    classes = support[::5, 0]
    assert len(set(classes)) == 10 and set(classes) <= set(range(20))
    np.testing.assert_array_equal(query[:, 0], np.repeat(classes, 15))
    assert support[:, 1].max() < 10 and query[:, 1].min() >= 10 and query[:, 1].max() < 20  # The two pools.
    seen.update(classes)
  assert len(seen) == 20
  batched = next(iter(osaka.pretrain_dataset(spec, seed=7, class_range=(0, 20), meta_batch_size=4)))
  assert batched.query_images.shape == (4, 150, 28, 28, 1)
  with pytest.raises(records.DataError, match='class range'):
    osaka.pretrain_dataset(spec, seed=0)  # (0, 900) needs the real 1623 classes.


def test_rotated_omniglot_classes_are_left_out_and_shapes_checked(specs):
  spec = specs['omniglot']
  classes = [dict(c) for c in spec.classes]
  classes[3] = dict(classes[3], attrs={'rotation': 90})
  rotated = dataclasses.replace(spec, classes=classes)
  assert osaka.omniglot_classes(rotated) == [c for c in range(25) if c != 3]
  wrong = dataclasses.replace(spec, image_shape=(84, 84, 3))
  with pytest.raises(records.DataError, match='28x28x1'):
    osaka.OsakaStream(wrong, specs['mnist'], specs['fashion_mnist'], seed=0)


@pytest.mark.slow
def test_real_mnist_classes_are_equalised(data_root, tmp_path):
  out = {}
  for name, raw in (('mnist', os.path.join(data_root, 'mnist')), ('fashion_mnist', None)):
    pipeline_main.run(name, raw, str(tmp_path / name), quiet=True)
    out[name] = records.DatasetSpec.load(str(tmp_path / name))
  write_tree(str(tmp_path / 'omniglot_raw'), LAYOUTS['omniglot'])
  pipeline_main.run('folder', str(tmp_path / 'omniglot_raw'), str(tmp_path / 'omniglot'), beam_args=BEAM_ARGS,
                    options={'image_size': 0, 'channels': 1}, quiet=True)
  s = osaka.OsakaStream(records.DatasetSpec.load(str(tmp_path / 'omniglot')), out['mnist'], out['fashion_mnist'],
                        seed=0, num_steps=300)
  assert s.images_per_class == [5421, 6000]
  steps = collect(s.dataset())
  mnist = [x for x in steps if x.mode == osaka.MNIST]
  assert mnist and max(x.images.max() for x in mnist) == 255.0

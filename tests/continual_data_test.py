"""Continual benchmarks: exact PIL rotations, permutations, subsets, class splits, errors."""
import numpy as np
import pytest
from PIL import Image

from wtl_tf.data import continual


@pytest.fixture(scope='module')
def data():
  rng = np.random.default_rng(0)
  return (rng.integers(0, 256, (300, 28, 28, 1), dtype=np.uint8), np.arange(300) % 10,
          rng.integers(0, 256, (50, 28, 28, 1), dtype=np.uint8), np.arange(50) % 10)


def test_rotations_are_pil_rotations_with_logged_angles(data):
  tasks = continual.build_tasks('rotations', *data, num_tasks=4, samples_per_task=30, seed=3)
  assert len(tasks) == 4
  test_x = data[2]
  for t, task in enumerate(tasks):
    angle = float(task.descriptor.split()[1])
    assert 9 * t <= angle < 9 * t + 9
    for i in (0, 7):
      want = np.asarray(Image.fromarray(test_x[i, ..., 0]).rotate(angle)).reshape(-1)
      np.testing.assert_array_equal(task.test_x[i], want)
    assert task.train_x.shape == (30, 784) and task.test_x.shape == (50, 784)
    assert len(np.unique(task.train_x, axis=0)) == 30  # A subset without repeats.
  again = continual.build_tasks('rotations', *data, num_tasks=4, samples_per_task=30, seed=3)
  assert [t.descriptor for t in again] == [t.descriptor for t in tasks]
  other = continual.build_tasks('rotations', *data, num_tasks=4, samples_per_task=30, seed=4)
  assert [t.descriptor for t in other] != [t.descriptor for t in tasks]


def test_permutations_permute_every_task_including_the_first(data):
  tasks = continual.build_tasks('permutations', *data, num_tasks=3, samples_per_task=20, seed=0)
  flat = data[2].reshape(50, -1)
  perms = []
  for task in tasks:
    assert not np.array_equal(task.test_x, flat)
    # Each test row is a fixed permutation of the original row: sorted pixels agree, labels unchanged.
    np.testing.assert_array_equal(np.sort(task.test_x, 1), np.sort(flat, 1))
    np.testing.assert_array_equal(task.test_y, data[3])
    perms.append(task.test_x[0].tobytes())
  assert len(set(perms)) == 3


def test_default_sizes_follow_the_paper():
  assert continual.DEFAULTS['rotations'] == (20, 1000)
  assert continual.DEFAULTS['many_permutations'] == (100, 200)


def test_class_split(data):
  tasks = continual.build_tasks('class_split', *data, classes_per_task=2, seed=0)
  assert len(tasks) == 5
  for t, task in enumerate(tasks):
    assert set(task.train_y) == {2 * t, 2 * t + 1} and set(task.test_y) == {2 * t, 2 * t + 1}
  with pytest.raises(ValueError, match='need'):
    continual.build_tasks('class_split', *data, num_tasks=6, classes_per_task=2)


def test_too_many_samples_or_bad_settings_are_errors(data):
  with pytest.raises(ValueError, match='only 300'):
    continual.build_tasks('rotations', *data, num_tasks=2, samples_per_task=301)
  with pytest.raises(ValueError, match='kind'):
    continual.Benchmark(kind='spirals')
  with pytest.raises(ValueError, match='num_tasks'):
    continual.Benchmark(num_tasks=0)

"""Few-shot episode sampler: labels, contents, without-replacement draws, determinism, modes, eval-episode files."""
import itertools
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipelines import main as pipeline_main
from wtl_tf.data import episodes
from wtl_tf.data import records

TRAIN_COUNTS = [20 + 3 * c for c in range(8)]  # Unequal class sizes: 20 .. 41.
VAL_COUNTS = [25, 6, 30]  # Class 'c01' of val is too small for 5-shot 15-query episodes.
SIZE = 8
BEAM_ARGS = ['--direct_running_mode=in_memory', '--direct_num_workers=1']


def write_tree(root, changed=None):
  """<split>/cNN/NNN.png; pixel (0, 0, 0) = class id, (0, 1, 0) = image index (the record order), rest random."""
  class_id = 0
  for split, counts in sorted({'train': TRAIN_COUNTS, 'val': VAL_COUNTS}.items()):
    for c, count in enumerate(counts):
      class_dir = os.path.join(root, split, f'c{c:02d}')
      os.makedirs(class_dir, exist_ok=True)
      for i in range(count):
        pixels = np.random.default_rng(1000 * class_id + i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        pixels[0, 0, 0], pixels[0, 1, 0] = class_id, i
        if changed == (class_id, i):
          pixels[-1, -1] ^= 1
        Image.fromarray(pixels).save(os.path.join(class_dir, f'{i:03d}.png'))
      class_id += 1


def convert(raw, out):
  pipeline_main.run('folder', raw, out, beam_args=BEAM_ARGS, options={'image_size': 0, 'channels': 3}, quiet=True)
  return records.DatasetSpec.load(out)


@pytest.fixture(scope='module')
def spec(tmp_path_factory):
  root = tmp_path_factory.mktemp('episodes')
  write_tree(str(root / 'raw'))
  return convert(str(root / 'raw'), str(root / 'out'))


@pytest.fixture(scope='module')
def pixels(spec):
  return records.load_by_class(spec, 'train')


def as_numpy(element):
  return type(element)(*(x.numpy() for x in element))


def take(ds, n):
  return [as_numpy(e) for e in ds.take(n)]


def identity(images):
  """(class id, image index) of each image, from the pixels the fixture wrote."""
  codes = np.round(images[:, 0, :2, 0] * 255).astype(int)
  return codes[:, 0], codes[:, 1]


def assert_same(a, b):
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('mode', ['memory', 'stream'])
def test_episodes_hold_the_right_images_and_labels(spec, pixels, mode):
  ways, shots, queries = 5, 2, 3
  sampler = episodes.EpisodeSampler(spec, 'train', ways, shots, queries, mode=mode)
  for e in take(sampler.dataset(seed=4), 25):
    assert e.support_images.shape == (ways * shots, SIZE, SIZE, 3) and e.support_images.dtype == np.float32
    assert e.query_images.shape == (ways * queries, SIZE, SIZE, 3)
    np.testing.assert_array_equal(e.support_labels, np.repeat(np.arange(ways), shots))
    np.testing.assert_array_equal(e.query_labels, np.repeat(np.arange(ways), queries))
    assert e.support_labels.dtype == np.int32 and e.query_labels.dtype == np.int32
    support_class, support_index = identity(e.support_images)
    query_class, query_index = identity(e.query_images)
    classes = support_class.reshape(ways, shots)[:, 0]
    assert len(set(classes)) == ways  # Classes without replacement.
    np.testing.assert_array_equal(support_class, np.repeat(classes, shots))
    np.testing.assert_array_equal(query_class, np.repeat(classes, queries))
    for j, c in enumerate(classes):
      drawn = np.concatenate([support_index[j * shots:(j + 1) * shots], query_index[j * queries:(j + 1) * queries]])
      assert len(set(drawn)) == shots + queries  # Images without replacement.
      np.testing.assert_allclose(e.support_images[j * shots:(j + 1) * shots],
                                 pixels[c][drawn[:shots]] / 255.0, atol=1e-6)
      np.testing.assert_allclose(e.query_images[j * queries:(j + 1) * queries],
                                 pixels[c][drawn[shots:]] / 255.0, atol=1e-6)


def test_memory_and_stream_modes_give_identical_episodes_matching_the_indices(spec):
  memory = episodes.EpisodeSampler(spec, 'train', 4, 3, 2, mode='memory')
  stream = episodes.EpisodeSampler(spec, 'train', 4, 3, 2, mode='stream')
  a, b = take(memory.dataset(seed=9), 10), take(stream.dataset(seed=9), 10)
  for x, y in zip(a, b):
    assert_same(x, y)
  class_ids, image_indices = memory.sample_indices(seed=9, start=0, num_episodes=10)
  for e, c, idx in zip(a, class_ids, image_indices):
    got_class, got_index = identity(e.support_images)
    np.testing.assert_array_equal(got_class, np.repeat(c, 3))
    np.testing.assert_array_equal(got_index, idx[:, :3].ravel())
    np.testing.assert_array_equal(identity(e.query_images)[1], idx[:, 3:].ravel())


def test_episodes_are_a_function_of_seed_and_index(spec):
  sampler = episodes.EpisodeSampler(spec, 'train', 5, 1, 2)
  first = take(sampler.dataset(seed=1), 12)
  for x, y in zip(first, take(sampler.dataset(seed=1, num_parallel_calls=1, prefetch=0), 12)):
    assert_same(x, y)  # Parallelism and prefetching change nothing.
  for x, y in zip(first[7:], take(sampler.dataset(seed=1, start=7), 5)):
    assert_same(x, y)  # Resuming at episode 7.
  other = take(sampler.dataset(seed=2), 12)
  assert sum(np.array_equal(x.support_images, y.support_images) for x, y in zip(first, other)) <= 1
  assert len({identity(e.support_images)[0].tobytes() for e in first}) > 8  # Episodes differ from each other.


def test_class_label_and_image_draws_are_uniform(spec):
  sampler = episodes.EpisodeSampler(spec, 'train', 5, 5, 15)
  n = 2000
  class_ids, image_indices = sampler.sample_indices(seed=3, num_episodes=n)
  num_classes = len(TRAIN_COUNTS)
  # Each class is in an episode with probability 5/8; the class labelled j is uniform over the 8 classes.
  np.testing.assert_allclose(np.bincount(class_ids.ravel(), minlength=num_classes) / n, 5 / num_classes, atol=0.04)
  for j in (0, 4):
    np.testing.assert_allclose(np.bincount(class_ids[:, j], minlength=num_classes) / n, 1 / num_classes, atol=0.04)
  assert all(len(set(row)) == 5 for row in class_ids)
  # Within class 0 (20 images, all 20 drawn): every image exactly once, in a uniformly random position.
  rows = image_indices[class_ids == 0]
  assert all(sorted(r) == list(range(20)) for r in rows)
  # Within class 7 (41 images): each image is drawn with probability 20/41.
  rows = image_indices[class_ids == 7]
  np.testing.assert_allclose(np.bincount(rows.ravel(), minlength=41) / len(rows), 20 / 41, atol=0.09)
  assert rows.max() == 40 and all(len(set(r)) == 20 for r in rows)


def test_meta_batches_stack_consecutive_episodes(spec):
  sampler = episodes.EpisodeSampler(spec, 'train', 3, 2, 4)
  batch = as_numpy(next(iter(sampler.dataset(seed=5, meta_batch_size=3))))
  assert batch.support_images.shape == (3, 6, SIZE, SIZE, 3) and batch.query_labels.shape == (3, 12)
  singles = take(sampler.dataset(seed=5), 3)
  for field, stacked in zip(episodes.Episode._fields, batch):
    np.testing.assert_array_equal(stacked, np.stack([getattr(e, field) for e in singles]))
  spec_shapes = sampler.dataset(seed=5, meta_batch_size=3).element_spec
  assert spec_shapes.support_images.shape == (3, 6, SIZE, SIZE, 3)  # Static shapes: one trace per step function.


def test_normalization_and_augmentation(spec):
  plain = take(episodes.EpisodeSampler(spec, 'train', 5, 2, 2).dataset(seed=6), 3)
  normed = take(episodes.EpisodeSampler(spec, 'train', 5, 2, 2, normalize=True).dataset(seed=6), 3)
  mean, std = np.array(episodes.IMAGENET_MEAN), np.array(episodes.IMAGENET_STD)
  for p, q in zip(plain, normed):
    np.testing.assert_allclose(q.query_images, (p.query_images - mean) / std, atol=1e-5)
  pad = 2
  augmenter = episodes.EpisodeSampler(spec, 'train', 5, 2, 2, augment=True, augment_padding=pad)
  augmented = take(augmenter.dataset(seed=6), 3)
  for x, y in zip(augmented, take(augmenter.dataset(seed=6), 3)):
    assert_same(x, y)
  flips, shifts = 0, set()
  for p, a in zip(plain, augmented):
    np.testing.assert_array_equal(p.support_labels, a.support_labels)
    for original, image in zip(np.concatenate([p.support_images, p.query_images]),
                               np.concatenate([a.support_images, a.query_images])):
      padded = np.pad(original, [(pad, pad), (pad, pad), (0, 0)])
      matches = [(dy, dx, flip) for dy, dx, flip in itertools.product(range(2 * pad + 1), range(2 * pad + 1), (0, 1))
                 if np.array_equal(image, (lambda w: w[:, ::-1] if flip else w)(
                     padded[dy:dy + SIZE, dx:dx + SIZE]))]
      assert matches, 'an augmented image is not a flipped/shifted window of its original'
      flips += matches[0][2]
      shifts.add(matches[0][:2])
  assert 10 < flips < 50 and len(shifts) > 10  # 60 images: about half flipped, many of the 25 shifts.


def test_too_small_class_and_too_many_ways_are_clear_errors(spec):
  with pytest.raises(records.DataError, match=r"class 9 \('c01'\) of split 'val' has 6 images in .*val-c00009"):
    episodes.EpisodeSampler(spec, 'val', 2, 5, 15)
  episodes.EpisodeSampler(spec, 'val', 2, 1, 5)  # 6 images suffice for 1-shot 5-query.
  with pytest.raises(records.DataError, match='9-way episodes need 9 classes'):
    episodes.EpisodeSampler(spec, 'train', 9, 1, 1)


def test_stream_mode_refuses_missing_or_truncated_records(spec, tmp_path):
  out = tmp_path / 'out'
  shutil.copytree(spec.root, out)
  copy = records.DatasetSpec.load(str(out))
  target = copy.files('train', 2)[0]
  with open(target, 'r+b') as f:
    f.truncate(os.path.getsize(target) - 10)
  with pytest.raises(records.DataError, match='train-c00002.*truncated'):
    episodes.EpisodeSampler(copy, 'train', 5, 1, 1, mode='stream')
  os.remove(target)
  with pytest.raises(records.DataError, match='train-c00002.*missing'):
    episodes.EpisodeSampler(copy, 'train', 5, 1, 1, mode='stream')


def test_eval_episodes_round_trip_and_refuse_a_changed_dataset(spec, tmp_path):
  sampler = episodes.EpisodeSampler(spec, 'train', 5, 2, 3)
  path = str(tmp_path / 'eval' / 'train_5w2s.npz')
  header = episodes.write_eval_episodes(path, sampler, seed=11, num_episodes=40)
  assert header['num_episodes'] == 40 and os.path.getsize(path) < 4000
  reread = take(episodes.read_eval_episodes(path, sampler), 40)
  assert len(reread) == 40
  for x, y in zip(reread, take(sampler.dataset(seed=11), 40)):
    assert_same(x, y)
  stream = episodes.EpisodeSampler(spec, 'train', 5, 2, 3, mode='stream')
  for x, y in zip(reread[:5], take(episodes.read_eval_episodes(path, stream), 5)):
    assert_same(x, y)
  batched = next(iter(episodes.read_eval_episodes(path, sampler, meta_batch_size=4)))
  assert batched.support_images.shape == (4, 10, SIZE, SIZE, 3)
  with pytest.raises(records.DataError, match='other episodes'):
    episodes.read_eval_episodes(path, episodes.EpisodeSampler(spec, 'train', 5, 1, 3))
  # The same classes and counts, but one image's content changed: the checksums in the spec differ.
  write_tree(str(tmp_path / 'raw2'), changed=(3, 5))
  changed = convert(str(tmp_path / 'raw2'), str(tmp_path / 'out2'))
  with pytest.raises(records.DataError, match='different version'):
    episodes.read_eval_episodes(path, episodes.EpisodeSampler(changed, 'train', 5, 2, 3))
  with pytest.raises(records.DataError, match='not found'):
    episodes.read_eval_episodes(str(tmp_path / 'nope.npz'), sampler)


def test_an_episode_dataset_feeds_a_compiled_step(spec):
  sampler = episodes.EpisodeSampler(spec, 'train', 5, 1, 3)
  traces = []

  @tf.function
  def step(batch):
    traces.append(1)
    return tf.reduce_mean(batch.support_images) + tf.cast(tf.reduce_sum(batch.query_labels), tf.float32)

  for batch in sampler.dataset(seed=0, num_episodes=8, meta_batch_size=2):
    step(batch)
  assert len(traces) == 1

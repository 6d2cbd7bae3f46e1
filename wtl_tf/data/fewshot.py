"""Episode sources for the few-shot experiment: prepared datasets (`FewShotData`) and synthetic data (`SyntheticData`).

A split at one episode shape gives `batch_at(seed, first, size)`, a one-element dataset of episodes first ..
first+size-1 and their positions (pure functions of (seed, position)), and `fixed(seed, num_episodes, directory)`, a
fixed evaluation set (for records an index file, wtl_tf/data/episodes.py, reused by later runs and seeds).
`SyntheticData` (class prototype plus Gaussian noise, no files) serves tests, smoke runs and benchmarks.
"""
import collections
import os
from typing import Dict, Optional, Sequence, Tuple

import gin
import numpy as np
import tensorflow as tf

from wtl_tf.data import episodes as episodes_lib
from wtl_tf.data import prepare
from wtl_tf.data import records
from wtl_tf.errors import ConfigError

Episode = episodes_lib.Episode

# Image shapes the pipelines write, so configurations can be checked (and models built) before data is loaded.
KNOWN_SHAPES = {'miniimagenet': (84, 84, 3), 'tieredimagenet': (84, 84, 3), 'cub': (84, 84, 3),
                'cars': (84, 84, 3), 'omniglot': (28, 28, 1), 'cifar10': (32, 32, 3), 'mnist': (28, 28, 1),
                'fashion_mnist': (28, 28, 1)}
NORMALIZED = ('miniimagenet',)

EpisodeShape = collections.namedtuple('EpisodeShape', ['ways', 'shots', 'queries'])


def _with_positions(dataset, positions_dataset):
  return tf.data.Dataset.zip((dataset, positions_dataset))


@gin.register
class FewShotData:
  """A prepared dataset (pipelines/ -> records) as few-shot splits.

  Args:
    dataset: pipeline name, e.g. 'miniimagenet', 'omniglot', 'tieredimagenet', 'cub', 'cars'.
    records_dir: prepared records (default: wtl_tf.data.prepare's cache, converting raw data on first use).
    raw_dir: raw files for the first conversion (default $WTL_DATA_DIR/<dataset>).
    options: pipeline options (e.g. {'num_val': 100} for an Omniglot val split); records converted with options
      go to `<records_dir or cache>-k=v...` (wtl_tf/data/prepare.py), so they never mix with default conversions.
    normalize: ImageNet mean/std normalisation; None = only for miniImageNet (the reference's choice).
    mode: EpisodeSampler mode, 'memory' (decode a split once) or 'stream' (tieredImageNet-size data).
    image_shape: expected image shape (default from KNOWN_SHAPES); checked against the dataset spec.
  """

  def __init__(self, dataset: str, records_dir: Optional[str] = None, raw_dir: Optional[str] = None,
               options: Optional[Dict[str, object]] = None, normalize: Optional[bool] = None, mode: str = 'memory',
               image_shape: Optional[Sequence[int]] = None):
    self.name = dataset
    self.options = dict(options or {})
    self.records_dir, self.raw_dir = records_dir, raw_dir
    self.normalize = dataset in NORMALIZED if normalize is None else bool(normalize)
    self.mode = mode
    shape = image_shape or KNOWN_SHAPES.get(dataset)
    if shape is None:
      raise ConfigError(f'FewShotData({dataset!r}): unknown image shape; set FewShotData.image_shape')
    self.image_shape = tuple(int(d) for d in shape)
    self._spec = None
    self._splits = {}

  @property
  def spec(self) -> records.DatasetSpec:
    if self._spec is None:
      self._spec = prepare.ensure_records(self.name, self.records_dir, self.raw_dir, options=self.options)
      if tuple(self._spec.image_shape) != self.image_shape:
        raise records.DataError(f'{self._spec.root}: images are {tuple(self._spec.image_shape)}, the configuration '
                                f'expects {self.image_shape} (FewShotData.image_shape)')
    return self._spec

  def split(self, split: str, ways: int, shots: int, queries: int, augment: bool = False) -> 'RecordSplit':
    key = (split, ways, shots, queries, augment)
    if key not in self._splits:
      sampler = episodes_lib.EpisodeSampler(self.spec, split, ways, shots, queries, mode=self.mode,
                                            normalize=self.normalize, augment=augment)
      self._splits[key] = RecordSplit(self.name, sampler)
    return self._splits[key]

  def __repr__(self):
    return f'FewShotData({self.name!r}, options={self.options}, normalize={self.normalize})'


class RecordSplit:
  """One split of a prepared dataset at one episode shape."""

  def __init__(self, dataset: str, sampler: episodes_lib.EpisodeSampler):
    self.dataset, self.sampler = dataset, sampler
    self.shape = EpisodeShape(sampler.ways, sampler.shots, sampler.queries)

  def batch_at(self, seed, first, size):
    episodes = self.sampler.dataset(seed, start=first, num_episodes=size, meta_batch_size=size, prefetch=0)
    return _with_positions(episodes, tf.data.Dataset.range(first, first + size).batch(size, drop_remainder=True))

  def fixed(self, seed: int, num_episodes: int, directory: str) -> 'FixedRecordEpisodes':
    s = self.sampler
    name = f'{self.dataset}_{s.split}_{s.ways}w{s.shots}s{s.queries}q_seed{seed}_{num_episodes}.npz'
    path = os.path.join(directory, name)
    if not tf.io.gfile.exists(path):
      tf.io.gfile.makedirs(directory)
      tmp = f'{path}.tmp{os.getpid()}'  # Workers of a cluster may write the same (identical) file at once.
      episodes_lib.write_eval_episodes(tmp, s, seed, num_episodes)
      tf.io.gfile.rename(tmp, path, overwrite=True)
    class_ids, image_indices, header = episodes_lib.load_eval_indices(path, s)
    return FixedRecordEpisodes(s, class_ids, image_indices, header['seed'], path)


class FixedRecordEpisodes:
  """A stored evaluation set; `dataset(positions, b)` gives its episodes at `positions`, b per element."""

  def __init__(self, sampler, class_ids, image_indices, seed, path):
    self.sampler, self.class_ids, self.image_indices, self.seed, self.path = (sampler, class_ids, image_indices, seed,
                                                                               path)

  def __len__(self):
    return len(self.class_ids)

  def dataset(self, positions: np.ndarray, batch_size: int) -> tf.data.Dataset:
    positions = np.asarray(positions, np.int64)
    episodes = self.sampler.from_indices(self.class_ids[positions], self.image_indices[positions], seed=self.seed,
                                         meta_batch_size=batch_size, prefetch=0)
    return _with_positions(episodes, tf.data.Dataset.from_tensor_slices(positions).batch(batch_size,
                                                                                         drop_remainder=True))


@gin.register
class SyntheticData:
  """Learnable synthetic few-shot data: class prototypes plus noise (no files).

  Args:
    image_shape: HxWxC.
    num_classes: classes per split.
    noise: standard deviation of the per-image noise around the prototype (prototypes have unit variance).
    seed: seeds the prototypes.
    name: the dataset name in results.
  """

  def __init__(self, image_shape: Sequence[int] = (28, 28, 1), num_classes: Optional[Dict[str, int]] = None,
               noise: float = 1.0, seed: int = 0, name: str = 'synthetic'):
    self.image_shape = tuple(int(d) for d in image_shape)
    self.num_classes = dict(num_classes or {'train': 64, 'val': 16, 'test': 20})
    self.noise, self.seed, self.name = float(noise), int(seed), name
    self._splits = {}

  def split(self, split: str, ways: int, shots: int, queries: int, augment: bool = False) -> 'SyntheticSplit':
    del augment  # Nothing to augment: every image is fresh noise already.
    if split not in self.num_classes:
      raise ConfigError(f'SyntheticData has splits {sorted(self.num_classes)}, not {split!r}')
    if ways > self.num_classes[split]:
      raise ConfigError(f'{ways}-way episodes need {ways} classes; synthetic split {split!r} has '
                       f'{self.num_classes[split]}')
    key = (split, ways, shots, queries)
    if key not in self._splits:
      rng = np.random.default_rng([self.seed, sorted(self.num_classes).index(split)])
      prototypes = rng.normal(size=(self.num_classes[split],) + self.image_shape).astype(np.float32)
      self._splits[key] = SyntheticSplit(self.name, split, prototypes, EpisodeShape(ways, shots, queries),
                                         self.noise)
    return self._splits[key]


class SyntheticSplit:
  """Episodes of one synthetic split; episode i under seed s uses the stateless key [s, i]."""

  def __init__(self, dataset, split, prototypes, shape: EpisodeShape, noise: float):
    self.dataset, self.split, self.shape, self.noise = dataset, split, shape, noise
    self._prototypes = tf.constant(prototypes)
    self._num_classes = prototypes.shape[0]

  def episode(self, seed, position) -> Episode:
    ways, shots, queries = self.shape
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(position, tf.int64)])
    class_key, noise_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    classes = tf.argsort(tf.random.stateless_uniform([self._num_classes], class_key))[:ways]
    image_shape = self._prototypes.shape[1:]
    per_class = shots + queries
    noise = tf.random.stateless_normal((ways, per_class) + tuple(image_shape), noise_key) * self.noise
    images = tf.gather(self._prototypes, classes)[:, tf.newaxis] + noise
    labels = tf.range(ways, dtype=tf.int32)[:, tf.newaxis]
    return Episode(
        support_images=tf.reshape(images[:, :shots], (ways * shots,) + tuple(image_shape)),
        support_labels=tf.reshape(tf.tile(labels, [1, shots]), [-1]),
        query_images=tf.reshape(images[:, shots:], (ways * queries,) + tuple(image_shape)),
        query_labels=tf.reshape(tf.tile(labels, [1, queries]), [-1]))

  def batch_at(self, seed, first, size):
    positions = tf.data.Dataset.range(first, first + size)
    episodes = positions.map(lambda i: self.episode(seed, i))
    return tf.data.Dataset.zip((episodes, positions)).batch(size, drop_remainder=True)  # Static shapes (TPU).

  def episodes(self, seed: int, start: int, count: int) -> Tuple[Episode, np.ndarray]:
    """Episodes start .. start+count-1 as numpy arrays [count, ...] (for tests and benchmarks)."""
    tasks, positions = next(iter(self.batch_at(seed, start, count)))
    return Episode(*(x.numpy() for x in tasks)), positions.numpy()

  def fixed(self, seed: int, num_episodes: int, directory: Optional[str] = None) -> 'FixedSyntheticEpisodes':
    del directory  # Nothing to store: the set is a function of the seed.
    return FixedSyntheticEpisodes(self, seed, num_episodes)


class FixedSyntheticEpisodes:
  def __init__(self, split: SyntheticSplit, seed: int, num_episodes: int):
    self.split, self.seed, self.num_episodes = split, seed, num_episodes

  def __len__(self):
    return self.num_episodes

  def dataset(self, positions: np.ndarray, batch_size: int) -> tf.data.Dataset:
    positions = tf.data.Dataset.from_tensor_slices(np.asarray(positions, np.int64))
    episodes = positions.map(lambda i: self.split.episode(self.seed, i))
    return tf.data.Dataset.zip((episodes, positions)).batch(batch_size, drop_remainder=True)

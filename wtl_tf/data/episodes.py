"""Few-shot episodes (N-way, K-shot, Q-query) from one split of a prepared dataset, as tf.data (docs/ALGORITHMS.md 3.1).

Classes and images are drawn without replacement; the j-th drawn class gets label j. Images are class-major:
  support_images: [ways*shots, H, W, C] float32   support_labels: [ways*shots] int32 (0,..,0,1,..,1,...)
  query_images:   [ways*queries, H, W, C] float32 query_labels:   [ways*queries] int32
Pixels are in [0, 1]; `normalize` applies the ImageNet mean/std (docs/ALGORITHMS.md gotcha 8); `augment` (training only)
flips with probability 1/2 and crops back to H x W after zero-padding by `augment_padding`.

Episode i under seed s is a pure function of (s, i) (stateless key [s, i], split for classes, images, augmentation),
so it does not depend on parallelism, and step n of a B-task meta-batch resumes with `dataset(seed, start=n*B)`.

Modes, bit-identical episodes: 'memory' decodes the split once into a uint8 CPU tf.Variable (kept out of the tf.data
graph) and gathers; 'stream' keeps only each record's byte range (from the 12-byte TFRecord headers, checked against
the spec's counts), reads the drawn classes' files and decodes only the drawn records: memory bounded by the classes in
flight (tieredImageNet), slower but fast enough (docs/PERFORMANCE.md). Build the sampler outside `strategy.scope()`.

Fixed evaluation episodes (`write_eval_episodes` / `read_eval_episodes`) are an .npz of indices, small and exact:
class ids [E, ways] (column j = label j), image positions [E, ways, shots+queries] in record order (first `shots` =
support), and a JSON header (shape, seed, fingerprint of the split's ids, names, counts and content checksums). A
re-converted dataset whose content changed is refused with a `DataError`.
"""
import collections
import hashlib
import io
import json
import os
import struct
from typing import Optional, Tuple

import gin
import numpy as np
import tensorflow as tf

from wtl_tf.data import records
from wtl_tf.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_FORMAT = 'wtl_tf.eval_episodes/1'
_INT64_MAX = np.iinfo(np.int64).max


class Episode(collections.namedtuple(
    'Episode', ['support_images', 'support_labels', 'query_images', 'query_labels'])):
  """One task, or a meta-batch of B tasks (then every field has a leading [B] axis)."""
  __slots__ = ()


def episode_key(seed, index):
  """The stateless RNG key of episode `index` under `seed`: int64 [2] (see the module docstring)."""
  return tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)])


def random_sample(key, num_valid, size, num_slots):
  """`size` distinct positions in [0, num_valid), in random order; num_valid [R] -> int32 [R, size].

  Ranks `num_slots` random int64s per row, invalid positions last: uniform without replacement, ties ~2^-60."""
  num_valid = tf.convert_to_tensor(num_valid, tf.int32)
  scores = tf.random.stateless_uniform(tf.stack([tf.size(num_valid), num_slots]), key, minval=None, maxval=None,
                                       dtype=tf.int64)
  valid = tf.range(num_slots)[tf.newaxis, :] < num_valid[:, tf.newaxis]
  scores = tf.where(valid, scores, tf.constant(_INT64_MAX, tf.int64))
  return tf.argsort(scores, axis=1, stable=True)[:, :size]


def preprocess(images, key, normalize=False, augment=False, padding=8):
  """uint8 [n, H, W, C] -> float32 in [0, 1] (then optionally ImageNet-normalized); augments in uint8 first."""
  if augment:
    images = _flip_and_crop(images, key, padding)
  images = tf.cast(images, tf.float32)
  if not normalize:
    return images * (1.0 / 255.0)
  # One multiply-add with [H, W, C] constants: broadcasting a [C] vector was slower on CPU (docs/PERFORMANCE.md).
  shape = images.shape[1:]
  std, mean = np.array(IMAGENET_STD, np.float32), np.array(IMAGENET_MEAN, np.float32)
  scale = np.broadcast_to(1.0 / (255.0 * std), shape).astype(np.float32)
  return images * scale + np.broadcast_to(-mean / std, shape).astype(np.float32)


def _flip_and_crop(images, key, padding):
  """Per image: a random H x W window of the zero-padded image, mirrored with probability 1/2 (two gathers)."""
  flip_key, crop_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
  n, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
  flip = tf.random.stateless_uniform([n], flip_key) < 0.5
  offsets = tf.random.stateless_uniform([n, 2], crop_key, minval=0, maxval=2 * padding + 1, dtype=tf.int32)
  padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
  rows = offsets[:, :1] + tf.range(height)[tf.newaxis, :]
  cols = offsets[:, 1:] + tf.where(flip[:, tf.newaxis], tf.range(width - 1, -1, -1)[tf.newaxis, :],
                                   tf.range(width)[tf.newaxis, :])
  cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
  return tf.gather(cropped, cols, axis=2, batch_dims=1)


# Kept under this name for callers of the sampler module; the implementation lives with the other readers.
load_classes = records.load_classes


def record_ranges(path) -> Tuple[np.ndarray, int]:
  """(int64 [n, 2] (byte offset, length) of each record's payload, file size) of a TFRecord file.

  Reads only the 12-byte headers (framing: uint64 length, uint32 masked crc, payload, uint32 crc)."""
  if not tf.io.gfile.exists(path):
    raise records.DataError(f'record file {path} is missing; re-run the pipeline that wrote {os.path.dirname(path)}')
  local = '://' not in path
  ranges, position = [], 0
  with (open(path, 'rb') if local else tf.io.gfile.GFile(path, 'rb')) as f:
    size = os.fstat(f.fileno()).st_size if local else f.size()
    while position < size:
      f.seek(position)
      header = f.read(12)
      if len(header) < 12:
        break
      (length,) = struct.unpack('<Q', header[:8])
      ranges.append((position + 12, length))
      position += 16 + length
  if position != size:
    raise records.DataError(f'{path} is truncated or not a TFRecord file (record framing ends at byte {position} '
                            f'of {size}); re-run the pipeline')
  return np.array(ranges, np.int64).reshape(-1, 2), size


@gin.register
class EpisodeSampler:
  """Episodes of one split; see the module docstring for the randomness, the modes and the eval-episode files."""

  def __init__(self, spec: records.DatasetSpec, split: str, ways: int, shots: int, queries: int = 15,
               mode: str = 'memory', normalize: bool = False, augment: bool = False, augment_padding: int = 8):
    if mode not in ('memory', 'stream'):
      raise ConfigError(f"EpisodeSampler.mode (FewShotData.mode) must be 'memory' or 'stream', got {mode!r}")
    if normalize and spec.image_shape[-1] != 3:
      raise ConfigError(f'normalize=True needs RGB images; {spec.name} has {spec.image_shape[-1]} channel(s)')
    self.spec, self.split, self.mode = spec, split, mode
    self.ways, self.shots, self.queries = int(ways), int(shots), int(queries)
    self.normalize, self.augment, self.augment_padding = normalize, augment, int(augment_padding)
    self.class_ids = np.array(spec.class_ids(split), np.int32)  # Position in this array = "class position".
    self.counts = np.array([spec.count(split, c) for c in self.class_ids], np.int32)
    self._check_sizes()
    self._max_count = int(self.counts.max())
    self._counts_t = tf.constant(self.counts)
    if mode == 'memory':
      self._load_images()
    else:
      self._index_files()

  @property
  def per_class(self):
    return self.shots + self.queries

  def _check_sizes(self):
    if self.ways > len(self.class_ids):
      raise records.DataError(f'{self.ways}-way episodes need {self.ways} classes; split {self.split!r} of '
                              f'{self.spec.name} ({self.spec.root}) has {len(self.class_ids)}')
    for class_id, count in zip(self.class_ids, self.counts):
      if count < self.per_class:
        raise records.DataError(
            f'class {class_id} ({self.spec.classes[class_id]["name"]!r}) of split {self.split!r} has {count} '
            f'images in {", ".join(self.spec.files(self.split, class_id))}; {self.shots}-shot {self.queries}-query '
            f'episodes need {self.per_class} per class')

  def _load_images(self):
    if tf.distribute.has_strategy():
      raise RuntimeError('build the EpisodeSampler outside strategy.scope(): its in-memory images would become a '
                         'distributed variable')
    offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
    images = load_classes(self.spec, [(self.split, int(c)) for c in self.class_ids])
    with tf.init_scope(), tf.device('/cpu:0'):
      self._images = tf.Variable(images, trainable=False, name='episode_images')
    self._offsets = tf.constant(offsets)

  def _index_files(self):
    """Byte ranges of every record of the split, so that an episode slices out only the records it drew."""
    files = [self.spec.files(self.split, int(c)) for c in self.class_ids]
    width = max(len(f) for f in files)
    offsets = np.zeros((len(files), self._max_count), np.int64)
    lengths = np.zeros((len(files), self._max_count), np.int64)
    for row, (class_id, class_files) in enumerate(zip(self.class_ids, files)):
      start, base = 0, 0  # Records of a multi-shard class are addressed in the concatenation of its shards.
      for f in class_files:
        found, size = record_ranges(f)
        n = min(len(found), self._max_count - start)
        offsets[row, start:start + n] = found[:n, 0] + base
        lengths[row, start:start + n] = found[:n, 1]
        start, base = start + len(found), base + size
      if start != self.counts[row]:
        raise records.DataError(
            f'{", ".join(class_files)}: {start} records of class {class_id} ({self.spec.classes[class_id]["name"]!r}), '
            f'the spec says {self.counts[row]}; re-run the pipeline')
    self._files = tf.constant([f + [''] * (width - len(f)) for f in files])
    self._num_files = tf.constant([len(f) for f in files], tf.int32)
    self._single_shard = width == 1
    self._record_offsets, self._record_lengths = tf.constant(offsets), tf.constant(lengths)


  def _sample(self, key):
    """-> class positions int32 [ways], image positions int32 [ways, shots+queries], augmentation key."""
    class_key, image_key, aug_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
    num_classes = len(self.class_ids)
    classes = random_sample(class_key, [num_classes], self.ways, num_classes)[0]
    images = random_sample(image_key, tf.gather(self._counts_t, classes), self.per_class, self._max_count)
    return classes, images, aug_key

  def sample_indices(self, seed: int, start: int = 0, num_episodes: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Episodes start..start+num_episodes-1 as (dataset class ids [E, ways], image positions [E, ways, s+q])."""
    ds = (tf.data.Dataset.range(start, start + num_episodes)
          .map(tf.autograph.experimental.do_not_convert(lambda i: self._sample(episode_key(seed, i))[:2]),
               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .batch(max(num_episodes, 1)))
    classes, images = ds.get_single_element()
    return self.class_ids[classes.numpy()], images.numpy()


  def _gather_memory(self, classes, images):
    index = tf.gather(self._offsets, classes)[:, tf.newaxis] + tf.cast(images, tf.int64)
    return tf.gather(self._images, index)

  def _read_class(self, position, images):
    """uint8 [shots+queries, H, W, C]: reads one class's record file(s), decodes only the drawn records."""
    if self._single_shard:
      contents = tf.io.read_file(self._files[position][0])
    else:
      files = self._files[position][:self._num_files[position]]
      contents = tf.strings.reduce_join(tf.map_fn(tf.io.read_file, files, fn_output_signature=tf.string))
    chosen = tf.strings.substr(contents, tf.gather(self._record_offsets[position], images),
                               tf.gather(self._record_lengths[position], images))
    encoded = tf.io.parse_example(chosen, {'image': tf.io.FixedLenFeature([], tf.string)})['image']
    channels = self.spec.image_shape[-1]
    decoded = tf.map_fn(lambda png: tf.io.decode_png(png, channels=channels), encoded,
                        fn_output_signature=tf.TensorSpec([None, None, channels], tf.uint8))
    return tf.ensure_shape(decoded, (self.per_class,) + tuple(self.spec.image_shape))

  def _gather_stream(self, classes, images):
    return tf.stack([self._read_class(classes[j], images[j]) for j in range(self.ways)])

  def _episode(self, classes, images, aug_key) -> Episode:
    gather = self._gather_memory if self.mode == 'memory' else self._gather_stream
    pixels = gather(classes, images)  # [ways, shots+queries, H, W, C] uint8
    shape = tuple(self.spec.image_shape)
    pixels = preprocess(tf.reshape(pixels, (-1,) + shape), aug_key, self.normalize, self.augment,
                        self.augment_padding)
    pixels = tf.reshape(pixels, (self.ways, self.per_class) + shape)
    label_grid = tf.range(self.ways, dtype=tf.int32)[:, tf.newaxis]
    return Episode(
        support_images=tf.reshape(pixels[:, :self.shots], (self.ways * self.shots,) + shape),
        support_labels=tf.reshape(tf.tile(label_grid, [1, self.shots]), [-1]),
        query_images=tf.reshape(pixels[:, self.shots:], (self.ways * self.queries,) + shape),
        query_labels=tf.reshape(tf.tile(label_grid, [1, self.queries]), [-1]))

  def _finish(self, ds, meta_batch_size, prefetch):
    if meta_batch_size:
      ds = ds.batch(meta_batch_size, drop_remainder=True)
    return ds.prefetch(prefetch) if prefetch else ds

  def dataset(self, seed: int, start: int = 0, num_episodes: Optional[int] = None,
              meta_batch_size: Optional[int] = None, num_parallel_calls=tf.data.AUTOTUNE,
              prefetch=tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Episodes start, start+1, ... (endless unless num_episodes), optionally batched into [B, ...] meta-batches."""
    stop = start + num_episodes if num_episodes is not None else np.iinfo(np.int64).max

    @tf.autograph.experimental.do_not_convert
    def make(i):
      return self._episode(*self._sample(episode_key(seed, i)))
    ds = tf.data.Dataset.range(start, stop).map(make, num_parallel_calls=num_parallel_calls, deterministic=True)
    return self._finish(ds, meta_batch_size, prefetch)

  def from_indices(self, class_ids, image_indices, seed: int = 0, meta_batch_size: Optional[int] = None,
                   num_parallel_calls=tf.data.AUTOTUNE, prefetch=tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Episodes given as dataset class ids [E, ways] and image positions [E, ways, shots+queries].

    Augmentation (if on) of episode e uses the key of episode e under `seed`."""
    class_ids, image_indices = np.asarray(class_ids), np.asarray(image_indices)
    if class_ids.ndim != 2 or class_ids.shape[1] != self.ways or image_indices.shape != class_ids.shape + (
        self.per_class,):
      raise ValueError(f'expected class ids [E, {self.ways}] and image indices [E, {self.ways}, {self.per_class}], '
                       f'got {class_ids.shape} and {image_indices.shape}')
    position = {int(c): i for i, c in enumerate(self.class_ids)}
    unknown = sorted({int(c) for c in class_ids.ravel()} - set(position))
    if unknown:
      raise records.DataError(f'classes {unknown[:5]} are not in split {self.split!r} of {self.spec.name}')
    positions = np.vectorize(position.get, otypes=[np.int32])(class_ids) if class_ids.size else class_ids
    if np.any(image_indices >= self.counts[positions][..., np.newaxis]) or np.any(image_indices < 0):
      raise records.DataError(f'image indices beyond the class sizes of split {self.split!r} of {self.spec.name}')
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(class_ids), dtype=np.int64),
                                             positions.astype(np.int32), image_indices.astype(np.int32)))

    @tf.autograph.experimental.do_not_convert
    def make(i, classes, images):
      return self._episode(classes, images, tf.random.experimental.stateless_split(episode_key(seed, i), 3)[2])
    ds = ds.map(make, num_parallel_calls=num_parallel_calls, deterministic=True)
    return self._finish(ds, meta_batch_size, prefetch)

  def fingerprint(self) -> str:
    """sha256 over the split's classes (id, name, count, content checksum) as dataset_spec.json records them."""
    digest = hashlib.sha256(f'{self.spec.name}\t{self.split}\n'.encode('utf-8'))
    for class_id, count in zip(self.class_ids, self.counts):
      entry = self.spec.classes[class_id]
      content = entry.get('content_sha256', {}).get(self.split, '')
      digest.update(f'{class_id}\t{entry["name"]}\t{count}\t{content}\n'.encode('utf-8'))
    return digest.hexdigest()


def write_eval_episodes(path: str, sampler: EpisodeSampler, seed: int, num_episodes: int = 600) -> dict:
  """Draws episodes 0..num_episodes-1 of `seed` and stores their indices in an .npz (see the module docstring)."""
  class_ids, image_indices = sampler.sample_indices(seed, 0, num_episodes)
  header = {'format': EVAL_FORMAT, 'dataset': sampler.spec.name, 'split': sampler.split, 'ways': sampler.ways,
            'shots': sampler.shots, 'queries': sampler.queries, 'seed': int(seed), 'num_episodes': int(num_episodes),
            'fingerprint': sampler.fingerprint()}
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  buffer = io.BytesIO()  # np.savez seeks, which tf.io.gfile writers (gs://, ...) cannot.
  np.savez_compressed(buffer, header=np.array(json.dumps(header, sort_keys=True)), class_ids=class_ids.astype(np.int32),
                      image_indices=image_indices.astype(np.int16 if sampler.counts.max() < 2**15 else np.int32))
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(buffer.getvalue())
  return header


def load_eval_indices(path: str, sampler: EpisodeSampler) -> Tuple[np.ndarray, np.ndarray, dict]:
  """(class ids, image indices, header) of an eval-episode file, checked against the sampler and its dataset."""
  if not tf.io.gfile.exists(path):
    raise records.DataError(f'eval episode file {path} not found; create it with write_eval_episodes')
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      with np.load(io.BytesIO(f.read())) as data:
        header = json.loads(str(data['header']))
        class_ids, image_indices = data['class_ids'], data['image_indices'].astype(np.int32)
  except (ValueError, KeyError, OSError) as e:
    raise records.DataError(f'{path} is not an eval episode file ({e}); rewrite it') from None
  if header.get('format') != EVAL_FORMAT:
    raise records.DataError(f'{path}: unknown format {header.get("format")!r}, expected {EVAL_FORMAT}')
  wanted = {'dataset': sampler.spec.name, 'split': sampler.split, 'ways': sampler.ways, 'shots': sampler.shots,
            'queries': sampler.queries}
  differ = {k: (header.get(k), v) for k, v in wanted.items() if header.get(k) != v}
  if differ:
    raise records.DataError(f'{path} holds other episodes than asked for (file vs sampler): {differ}')
  if header['fingerprint'] != sampler.fingerprint():
    raise records.DataError(
        f'{path} was written for a different version of {sampler.spec.name} split {sampler.split!r} (classes, '
        f'counts or image content changed in {sampler.spec.root}); rewrite the eval episodes for this dataset')
  return class_ids, image_indices, header


def read_eval_episodes(path: str, sampler: EpisodeSampler, meta_batch_size: Optional[int] = None,
                       prefetch=tf.data.AUTOTUNE) -> tf.data.Dataset:
  """The stored episodes as a tf.data.Dataset of Episode, identical to when they were written."""
  class_ids, image_indices, header = load_eval_indices(path, sampler)
  return sampler.from_indices(class_ids, image_indices, seed=header['seed'], meta_batch_size=meta_batch_size,
                              prefetch=prefetch)

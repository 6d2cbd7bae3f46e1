"""Reads what pipelines/ writes: dataset_spec.json plus per-class TFRecords of PNG images.

Errors (`DataError`) name the file and what to do: missing spec, truncated or corrupt records, counts unlike the spec.
"""
import dataclasses
import json
import os
import re
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from wtl_tf.errors import UserError

SPEC_FILE = 'dataset_spec.json'
RECORDS_DIR = 'records'


class DataError(UserError):
  """Missing, corrupt or inconsistent prepared data; the message says which file and what to do."""


@dataclasses.dataclass
class DatasetSpec:
  root: str
  name: str
  image_shape: Tuple[int, int, int]
  classes: List[dict]
  raw: dict

  @classmethod
  def load(cls, root) -> 'DatasetSpec':
    path = os.path.join(root, SPEC_FILE)
    if not tf.io.gfile.exists(path):
      raise DataError(f'{path} not found: convert the raw data first, e.g. '
                      f'`python -m pipelines.main --dataset=NAME --input_dir=RAW --output_dir={root}`')
    try:
      with tf.io.gfile.GFile(path) as f:
        raw = json.load(f)
      return cls(root=root, name=raw['name'], image_shape=tuple(raw['image_shape']), classes=raw['classes'],
                 raw=raw)
    except (ValueError, KeyError) as e:
      raise DataError(f'{path} is not a valid dataset spec ({e}); re-run the pipeline') from None

  def class_ids(self, split) -> List[int]:
    ids = [c['id'] for c in self.classes if split in c['counts']]
    if not ids:
      raise DataError(f'{self.name} has no classes in split {split!r} (splits: {sorted(self.raw["splits"])})')
    return ids

  def count(self, split, class_id) -> int:
    return self.classes[class_id]['counts'][split]

  def files(self, split, class_id) -> List[str]:
    return [os.path.join(self.root, RECORDS_DIR, f) for f in self.classes[class_id]['files'][split]]

  @property
  def bad_images(self):
    return self.raw.get('bad_images', [])


_FEATURES = {'image': tf.io.FixedLenFeature([], tf.string), 'label': tf.io.FixedLenFeature([], tf.int64)}


def _decode_fn(channels):
  def decode(serialized):
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    return tf.io.decode_png(parsed['image'], channels=channels), parsed['label']
  return decode


def _is_damaged(path) -> bool:
  try:
    for _ in tf.data.TFRecordDataset(path):
      pass
  except tf.errors.DataLossError:
    return True
  return False


# What TensorFlow says when a record's bytes are damaged (a real bug's InvalidArgumentError keeps its traceback).
_DAMAGED = re.compile(r'parse|png|jpeg|decode|corrupt|truncat|checksum|crc', re.IGNORECASE)


def checked(iterable: Iterable, what: str) -> Iterator:
  """Iterates a dataset that reads records lazily (stream mode); a damaged record is a DataError naming `what`."""
  try:
    yield from iterable
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    if isinstance(e, tf.errors.InvalidArgumentError) and not _DAMAGED.search(e.message):
      raise
    reason = re.sub(r'\{\{[^}]*\}\}\s*', '', e.message.splitlines()[0]).rsplit(': ', 1)[-1][:200]
    raise DataError(f'a corrupt record in {what}: {reason}. Re-run the pipeline.') from None


def read_files(files: Sequence[str], image_shape) -> Tuple[np.ndarray, np.ndarray]:
  """All images of the given record files as (uint8 [N,H,W,C], int64 [N]), in file order."""
  for f in files:
    if not tf.io.gfile.exists(f):
      raise DataError(f'record file {f} is missing; re-run the pipeline that wrote {os.path.dirname(f)}')
  dataset = (tf.data.TFRecordDataset(list(files), num_parallel_reads=1)
             .map(_decode_fn(image_shape[-1]), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
             .batch(4096))
  images, labels = [], []
  try:
    for x, y in dataset:
      images.append(x.numpy())
      labels.append(y.numpy())
  except tf.errors.DataLossError as e:
    names = [f for f in files if _is_damaged(f)] or files  # Name the file: a split may read thousands at once.
    raise DataError(f'corrupt or truncated TFRecord {", ".join(os.path.basename(f) for f in names[:3])} '
                    f'in {os.path.dirname(names[0])}: {e.message.splitlines()[0]}. Re-run the pipeline.') from None
  except tf.errors.InvalidArgumentError as e:
    raise DataError(f'undecodable record in {files}: {e.message.splitlines()[0]}') from None
  if not images:
    return np.zeros((0,) + tuple(image_shape), np.uint8), np.zeros((0,), np.int64)
  images, labels = np.concatenate(images), np.concatenate(labels)
  if images.shape[1:] != tuple(image_shape):
    raise DataError(f'{files[0]}: images are {images.shape[1:]}, the spec says {tuple(image_shape)}')
  return images, labels


def load_class(spec: DatasetSpec, split: str, class_id: int) -> np.ndarray:
  """All images of one class in one split, checked against the spec's count."""
  images, labels = read_files(spec.files(split, class_id), spec.image_shape)
  expected = spec.count(split, class_id)
  if len(images) != expected or np.any(labels != class_id):
    raise DataError(f'{spec.files(split, class_id)[0]}: {len(images)} records of class {class_id} '
                    f'({spec.classes[class_id]["name"]!r}), the spec says {expected}; re-run the pipeline')
  return images


def load_classes(spec: DatasetSpec, items: Sequence[Tuple[str, int]]) -> np.ndarray:
  """uint8 images of the (split, class id) pairs, concatenated in order, each class checked against the spec.

  One tf.data pass for all: a pipeline per class costs a start-up each, too much for Omniglot's 1623 classes.
  """
  files = [f for split, class_id in items for f in spec.files(split, class_id)]
  images, labels = read_files(files, spec.image_shape)
  start = 0
  for split, class_id in items:
    count = spec.count(split, class_id)
    if np.any(labels[start:start + count] != class_id) or start + count > len(labels):
      raise DataError(
          f'{spec.files(split, class_id)[0]}: the records of class {class_id} ({spec.classes[class_id]["name"]!r}) '
          f'do not match the spec\'s count {count} (or hold other labels); re-run the pipeline')
    start += count
  if start != len(images):
    raise DataError(f'the record files of {spec.root} hold {len(images)} images, the spec says {start}; '
                            f're-run the pipeline')
  return images


def load_split(spec: DatasetSpec, split: str, class_ids: Optional[Sequence[int]] = None,
               shuffle_seed: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Images and class ids of a split, class by class (or shuffled with a seed)."""
  class_ids = list(spec.class_ids(split) if class_ids is None else class_ids)
  images = load_classes(spec, [(split, c) for c in class_ids])
  labels = np.concatenate([np.full(spec.count(split, c), c, np.int64) for c in class_ids])
  if shuffle_seed is not None:
    order = np.random.default_rng(shuffle_seed).permutation(len(images))
    images, labels = images[order], labels[order]
  return images, labels


def load_by_class(spec: DatasetSpec, split: str) -> Dict[int, np.ndarray]:
  """{class id: uint8 images} for every class of a split (the in-memory mode of the samplers)."""
  ids = spec.class_ids(split)
  images = load_classes(spec, [(split, c) for c in ids])
  bounds = np.cumsum([spec.count(split, c) for c in ids])[:-1]
  return dict(zip(ids, np.split(images, bounds)))

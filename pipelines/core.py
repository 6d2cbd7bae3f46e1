"""Shared Beam stages: raw image -> decoded, resized PNG -> per-class TFRecords + dataset_spec.json.

Every dataset module (pipelines/datasets/*.py) provides two things:
  * `plan(input_dir, **options) -> Plan`: runs on the launching machine, lists the classes in a fixed order
    (class ids are positions in that list), the raw files to checksum, and the settings of the run;
  * `read(plan)`: a `beam.PTransform` from the pipeline root to `RawImage` elements.
Everything after that is shared and dataset-agnostic (`build_pipeline`).

Output layout (the contract read by wtl_tf/data/records.py):
  OUT/dataset_spec.json
  OUT/records/<split>-c<class_id:05d>-<shard:05d>-of-<num_shards:05d>.tfrecord
Each record is a tf.train.Example with `image` (PNG bytes), `label` (int64 class id) and `source_id` (bytes).
Records inside a file are sorted by source_id and PNG encoding is deterministic, so re-running a pipeline on the
same input gives byte-identical files.
"""
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import zipfile
import zlib
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
import numpy as np

PIPELINE_VERSION = '1.0'
SPEC_FILE = 'dataset_spec.json'
RECORDS_DIR = 'records'
MAX_RECORDS_PER_SHARD = 20000


class RawImage(NamedTuple):
  """One raw image as a dataset module emits it.

  `data` is either encoded bytes (PNG/JPEG/...; anything PIL opens) or a uint8 numpy array [H, W] or [H, W, C].
  `bbox` = (x1, y1, x2, y2), inclusive pixel coordinates, crops before resizing (Stanford Cars).
  `rotation` (degrees, counter-clockwise) is applied after resizing (Omniglot's rotated extra classes).
  `invert` flips intensities (Omniglot PNGs are dark strokes on white; the MAML split inverts them, OSAKA does not).
  """
  class_id: int
  split: str
  source_id: str
  data: Any
  bbox: Optional[Tuple[int, int, int, int]] = None
  rotation: int = 0
  invert: bool = False


@dataclasses.dataclass
class ClassInfo:
  name: str
  split: Optional[str]  # None for datasets whose splits are per image (MNIST, CIFAR): both splits hold the class.
  attrs: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Plan:
  """What a dataset module decided on the launching machine; everything here goes into dataset_spec.json."""
  dataset: str
  input_dir: str
  classes: List[ClassInfo]
  image_shape: Tuple[int, int, int]  # (H, W, C) of the stored images.
  sources: List[str]  # Raw files whose sha256 goes into the spec.
  resize: bool = True  # False: images must already have image_shape (a mismatch is an error naming the file).
  options: Dict[str, Any] = dataclasses.field(default_factory=dict)
  extra: Dict[str, Any] = dataclasses.field(default_factory=dict)  # Items for the spec (split rule, URLs, ...).
  splits: Tuple[str, ...] = ('train', 'val', 'test')


class InputError(ValueError):
  """Raw input that cannot be used (corrupt or truncated archive, duplicate ids); the message names the file."""


class ImageShapeError(InputError):
  """An image that does not have the shape its dataset requires."""


class OutputError(ValueError):
  """The output directory cannot be written (not a directory, no permission, disk full)."""


# What zip/tar/gzip/zlib raise for a damaged or cut-off file; none of them names the file.
CORRUPT_ARCHIVE_ERRORS = (EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError, gzip.BadGzipFile)


@contextlib.contextmanager
def reading(path):
  """Turns the errors of a corrupt or truncated raw file, raised in the block, into an InputError naming it."""
  try:
    yield
  except CORRUPT_ARCHIVE_ERRORS as e:
    raise InputError(f'{path} is corrupt or truncated ({type(e).__name__}: {e}); download it again') from None


def sha256_of(path, chunk=1 << 20):
  digest = hashlib.sha256()
  with FileSystems.open(path, compression_type='uncompressed') as f:  # The file as downloaded, not its content.
    while True:
      block = f.read(chunk)
      if not block:
        break
      digest.update(block)
  return digest.hexdigest()


def to_pil(data):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if isinstance(data, np.ndarray):
    return Image.fromarray(data.squeeze(-1) if data.ndim == 3 and data.shape[-1] == 1 else data)
  image = Image.open(io.BytesIO(data))
  image.load()  # Forces the full decode here, so truncated files fail here.
  return image


def process_image(raw: RawImage, image_shape, resize: bool, class_name: str) -> bytes:
  """Decode, crop, convert, resize, rotate and PNG-encode one image (pure; raises on undecodable data)."""
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top
  height, width, channels = image_shape
  image = to_pil(raw.data)
  image = image.convert('L' if channels == 1 else 'RGB')
  if raw.bbox is not None:
    x1, y1, x2, y2 = raw.bbox
    image = image.crop((max(0, x1), max(0, y1), min(image.width, x2 + 1), min(image.height, y2 + 1)))
  if image.size != (width, height):
    if not resize:
      raise ImageShapeError(
          f'{raw.source_id} (class {class_name!r}) is {image.height}x{image.width}, expected {height}x{width}')
    # LANCZOS is the antialiased resize of the MAML Omniglot/miniImageNet preprocessing.
    image = image.resize((width, height), resample=Image.LANCZOS)
  if raw.invert:
    image = ImageOps.invert(image)
  if raw.rotation:
    image = image.rotate(raw.rotation)  # Square images: a multiple of 90 degrees keeps every pixel.
  out = io.BytesIO()
  image.save(out, format='PNG', compress_level=6)
  return out.getvalue()


def make_example(png: bytes, label: int, source_id: str) -> bytes:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  feature = {
      'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
      'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
      'source_id': tf.train.Feature(bytes_list=tf.train.BytesList(value=[source_id.encode('utf-8')])),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


class EncodeFn(beam.DoFn):
  """RawImage -> ((split, class_id), (source_id, serialized Example, sha256 of the raw bytes)); bad ones -> 'bad'."""
  BAD = 'bad'

  def __init__(self, image_shape, resize, class_names):
    self._image_shape = tuple(image_shape)
    self._resize = resize
    self._class_names = list(class_names)
    self._ok = beam.metrics.Metrics.counter('wtl_tf', 'images_written')
    self._bad = beam.metrics.Metrics.counter('wtl_tf', 'images_bad')

  def process(self, raw: RawImage):
    name = self._class_names[raw.class_id]
    try:
      png = process_image(raw, self._image_shape, self._resize, name)
    except ImageShapeError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (PIL raises many types for corrupt data)
      self._bad.inc()
      yield beam.pvalue.TaggedOutput(self.BAD, {
          'source_id': raw.source_id, 'class': name, 'split': raw.split,
          'error': re.sub(r' (object )?at 0x[0-9a-f]+', '', f'{type(e).__name__}: {e}')})  # Stable text.
      return
    raw_bytes = raw.data.tobytes() if isinstance(raw.data, np.ndarray) else raw.data
    self._ok.inc()
    yield ((raw.split, raw.class_id),
           (raw.source_id, make_example(png, raw.class_id, raw.source_id), hashlib.sha256(raw_bytes).hexdigest()))


class MemberReader:
  """Reads loose files and zip members, keeping each zip open once per work item (a context manager).

  `read(input_dir, container, location)`: `container` None means the file `input_dir/location`; otherwise `location`
  is a member of the zip file `container`.
  """

  def __enter__(self):
    self._archives = {}
    return self

  def read(self, input_dir, container, location) -> bytes:
    if container is None:
      with FileSystems.open(os.path.join(input_dir, location), compression_type='uncompressed') as f:
        return f.read()
    with reading(container):
      if container not in self._archives:
        handle = FileSystems.open(container, compression_type='uncompressed')
        self._archives[container] = (handle, zipfile.ZipFile(handle))
      return self._archives[container][1].read(location)

  def __exit__(self, *exc):
    for handle, archive in self._archives.values():
      archive.close()
      handle.close()
    return False


def shard_name(split, class_id, shard, num_shards):
  return f'{split}-c{class_id:05d}-{shard:05d}-of-{num_shards:05d}.tfrecord'


def sort_and_shard(keyed, max_per_shard=MAX_RECORDS_PER_SHARD):
  """((split, class_id), [(source_id, example, sha)]) -> (file name, [examples]) per shard, in source_id order."""
  (split, class_id), items = keyed
  items = sorted(items, key=lambda item: item[0])
  ids = [item[0] for item in items]
  if len(set(ids)) != len(ids):
    dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
    raise InputError(f'duplicate source ids in split {split!r}, class {class_id}: {dup}')
  num_shards = max(1, -(-len(items) // max_per_shard))
  for shard in range(num_shards):
    chunk = items[shard * max_per_shard:(shard + 1) * max_per_shard]
    yield shard_name(split, class_id, shard, num_shards), [item[1] for item in chunk]


def class_summary(keyed):
  """Per (split, class): image count and one checksum over its raw images (sorted by source id)."""
  (split, class_id), items = keyed
  digest = hashlib.sha256()
  for source_id, _, sha in sorted(items, key=lambda item: item[0]):
    digest.update(f'{source_id}\t{sha}\n'.encode('utf-8'))
  return {'split': split, 'class_id': class_id, 'count': len(items), 'content_sha256': digest.hexdigest(),
          'num_shards': max(1, -(-len(items) // MAX_RECORDS_PER_SHARD))}


class TFRecordFileSink(fileio.FileSink):
  """Writes one element = (file name, [serialized records]) as a TFRecord file, using Beam's own record framing."""

  def open(self, fh):
    self._fh = fh  # pylint: disable=attribute-defined-outside-init

  def write(self, record):
    from apache_beam.io.tfrecordio import _TFRecordUtil  # pylint: disable=g-import-not-at-top,protected-access
    for value in record[1]:
      _TFRecordUtil.write_record(self._fh, value)

  def flush(self):
    self._fh.flush()


def _name_by_destination(window, pane, shard_index, total_shards, compression, destination):
  del window, pane, shard_index, total_shards, compression
  return destination


def write_spec(_, plan: Plan, output_dir: str, summaries, bad, source_checksums):
  """Assembles dataset_spec.json from the per-class summaries (runs once, at the end of the pipeline)."""
  by_class = {}
  for s in summaries:
    by_class.setdefault(s['class_id'], {})[s['split']] = s
  classes = []
  for class_id, info in enumerate(plan.classes):
    per_split = by_class.get(class_id, {})
    entry = {'id': class_id, 'name': info.name, 'split': info.split,
             'counts': {sp: per_split[sp]['count'] for sp in sorted(per_split)},
             'content_sha256': {sp: per_split[sp]['content_sha256'] for sp in sorted(per_split)},
             'files': {sp: [shard_name(sp, class_id, i, per_split[sp]['num_shards'])
                            for i in range(per_split[sp]['num_shards'])] for sp in sorted(per_split)}}
    if info.attrs:
      entry['attrs'] = info.attrs
    classes.append(entry)
  splits = {}
  for sp in plan.splits:
    ids = [c['id'] for c in classes if sp in c['counts']]
    splits[sp] = {'num_classes': len(ids), 'num_images': sum(classes[i]['counts'][sp] for i in ids)}
  spec = {
      'name': plan.dataset,
      'pipeline_version': PIPELINE_VERSION,
      'image_shape': list(plan.image_shape),
      'encoding': 'png',
      'record_features': {'image': 'bytes (PNG)', 'label': 'int64 class id', 'source_id': 'bytes'},
      'splits': splits,
      'classes': classes,
      'options': plan.options,
      'sources': [{'path': os.path.relpath(p, plan.input_dir) if not p.startswith(('gs://', 's3://')) else p,
                   'sha256': sha} for p, sha in source_checksums],
      'bad_images': sorted(bad, key=lambda b: b['source_id']),
      **plan.extra,
  }
  with FileSystems.create(FileSystems.join(output_dir, SPEC_FILE)) as f:
    f.write(json.dumps(spec, indent=1, sort_keys=True).encode('utf-8'))
  return spec


def build_pipeline(pipeline: beam.Pipeline, plan: Plan, read: beam.PTransform, output_dir: str):
  """Adds the shared stages after `read` (a PTransform from the root to RawImage elements)."""
  source_checksums = [(p, sha256_of(p)) for p in sorted(plan.sources)]
  raw = pipeline | 'Read' >> read
  encoded = raw | 'Encode' >> beam.ParDo(
      EncodeFn(plan.image_shape, plan.resize, [c.name for c in plan.classes])).with_outputs(EncodeFn.BAD, main='ok')
  grouped = encoded.ok | 'GroupByClass' >> beam.GroupByKey()
  _ = (grouped
       | 'SortAndShard' >> beam.FlatMap(sort_and_shard)
       | 'WriteRecords' >> fileio.WriteToFiles(
           path=FileSystems.join(output_dir, RECORDS_DIR), destination=lambda e: e[0],
           file_naming=_name_by_destination, sink=lambda _: TFRecordFileSink(), shards=1))
  summaries = grouped | 'Summarise' >> beam.Map(class_summary)
  _ = (pipeline
       | 'Once' >> beam.Create([None])
       | 'WriteSpec' >> beam.Map(write_spec, plan=plan, output_dir=output_dir,
                                 summaries=beam.pvalue.AsList(summaries),
                                 bad=beam.pvalue.AsList(encoded[EncodeFn.BAD]),
                                 source_checksums=source_checksums))
  return pipeline


def remove_temp_dirs(output_dir):
  """WriteToFiles leaves its (empty) staging directories behind; they are not part of the output."""
  records = os.path.join(output_dir, RECORDS_DIR)
  if os.path.isdir(records):  # Local output only; on object stores the staging prefixes hold no objects.
    for name in os.listdir(records):
      if name.startswith('.temp'):
        shutil.rmtree(os.path.join(records, name), ignore_errors=True)


def read_spec(output_dir) -> dict:
  with FileSystems.open(FileSystems.join(output_dir, SPEC_FILE)) as f:
    return json.loads(f.read().decode('utf-8'))


def create_from(items: Iterable, label: str):
  """A PTransform that starts a pipeline from a small list of work items (file names, index ranges)."""
  return label >> beam.Create(list(items), reshuffle=True)

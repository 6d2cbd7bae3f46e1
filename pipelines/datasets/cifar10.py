"""CIFAR-10 (Krizhevsky 2009): 60,000 32x32 RGB images of 10 classes, 50,000 'train' and 10,000 'test'.

Inputs, looked up in --input_dir in this order:
  * the official python batches `data_batch_1..5`, `test_batch` and `batches.meta`, in the input directory or its
    `cifar-10-batches-py/` folder, or the official `cifar-10-python.tar.gz` that holds them (read as a stream);
  * an image-folder layout `train/<class>/*.jpg` and `test/<class>/*.jpg` (any format PIL reads), extracted or in
    zips whose members follow that layout (e.g. `cifar10_jpeg_train.zip` / `cifar10_jpeg_test.zip`).
Classes are the 10 CIFAR classes in the official label order (batches.meta; folder names must be those names).
Splits are per image, as in MNIST: every class has 'train' and 'test' images. Images keep their native 32x32x3; any
other size is an error naming the file and class. The batches are the official pixels; JPEG copies are lossy, and the
spec's `input_format` says which one a conversion used. Batches are unpickled with a loader that only accepts numpy
arrays and plain containers.
"""
import io
import os
import pickle
import re
import tarfile
import zipfile

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
import numpy as np

from pipelines import core

CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
BATCHES = {'train': tuple(f'data_batch_{i}' for i in range(1, 6)), 'test': ('test_batch',)}
META = 'batches.meta'
BATCH_DIR = 'cifar-10-batches-py'
TAR_NAME = 'cifar-10-python.tar.gz'
SPLITS = ('train', 'test')
EXPECTED = {'train': 50000, 'test': 10000}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
MEMBER = re.compile(r'^(?:.*/)?(train|test)/([^/]+)/([^/]+)$')
CHUNK = 2500  # Images per work item.
# For users who are online; never used by the pipeline or tests.
DOWNLOADS = {
    'url': 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (the python version)',
    'md5': {'cifar-10-python.tar.gz': 'c58f30108f718f92721af3b95e74349a'},
}


class _BatchUnpickler(pickle.Unpickler):
  """Loads the official batches (dicts of numpy arrays, lists and strings); any other global is refused."""
  ALLOWED = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
             ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
             ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode')}

  def find_class(self, module, name):
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a CIFAR batch')
    if module.startswith('numpy.core'):  # numpy 2 moved it; the old name only warns.
      module = 'numpy._core' + module[len('numpy.core'):]
    return super().find_class(module, name)


def load_batch(data: bytes, name: str) -> dict:
  """A batch or batches.meta as a dict with str keys (Python 2 pickles give bytes keys)."""
  try:
    batch = _BatchUnpickler(io.BytesIO(data), encoding='bytes').load()
  except Exception as e:  # pylint: disable=broad-except  (unpickling raises many types)
    raise ValueError(f'cifar10: {name} is not a CIFAR python batch: {type(e).__name__}: {e}') from None
  if not isinstance(batch, dict):
    raise ValueError(f'cifar10: {name} is not a CIFAR python batch (a {type(batch).__name__}, not a dict)')
  return {k.decode('latin1') if isinstance(k, bytes) else k: v for k, v in batch.items()}


def batch_images(batch: dict, name: str):
  """(uint8 [N, 32, 32, 3], int [N]) of a batch; its rows are 1024 R, 1024 G, 1024 B values, each row-major."""
  data, labels = np.asarray(batch.get('data')), np.asarray(batch.get('labels'))
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
    raise ValueError(f'cifar10: {name}: expected uint8 data [N, 3072] and N labels, got {data.dtype} {data.shape} '
                     f'and {labels.shape}')
  if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
    raise ValueError(f'cifar10: {name}: labels must be in 0..9, got {labels.min()}..{labels.max()}')
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _read_bytes(path):
  with FileSystems.open(path, compression_type='uncompressed') as f:
    return f.read()


def _read_tar_members(path, names):
  """{name: bytes} of the wanted batch files, streaming the archive once."""
  out = {}
  with core.reading(path), FileSystems.open(path, compression_type='uncompressed') as f, \
      tarfile.open(fileobj=f, mode='r|*') as tar:
    for member in tar:
      base = member.name.split('/')[-1]
      if member.isfile() and base in names:
        out[base] = tar.extractfile(member).read()
        if len(out) == len(names):
          break
  return out


def _is_image(name):
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.split('/')[-1].startswith('.')


def locate(input_dir):
  """('batches', folder) | ('tar', archive) | ('folders', input_dir) | ('zips', [zip paths])."""
  if not input_dir or not os.path.isdir(input_dir):
    raise FileNotFoundError(f'cifar10: input directory {input_dir!r} does not exist')
  wanted = [META] + [b for split in SPLITS for b in BATCHES[split]]
  for folder in (input_dir, os.path.join(input_dir, BATCH_DIR)):
    present = [w for w in wanted if os.path.isfile(os.path.join(folder, w))]
    if len(present) == len(wanted):
      return 'batches', folder
    if present:
      raise FileNotFoundError(f'cifar10: {folder} has {", ".join(present)} but not '
                              f'{", ".join(w for w in wanted if w not in present)}; re-extract {TAR_NAME}')
  if os.path.isfile(os.path.join(input_dir, TAR_NAME)):
    return 'tar', os.path.join(input_dir, TAR_NAME)
  if any(os.path.isdir(os.path.join(input_dir, s)) for s in SPLITS):
    return 'folders', input_dir
  zips = [os.path.join(input_dir, n) for n in sorted(os.listdir(input_dir)) if n.endswith('.zip')]
  if zips:
    return 'zips', zips
  raise FileNotFoundError(
      f'cifar10: none of {BATCH_DIR}/ (data_batch_1..5, test_batch, batches.meta), {TAR_NAME}, train/<class>/ '
      f'folders or zips of them in {input_dir}. Download {DOWNLOADS["url"]} (MD5 '
      f'{DOWNLOADS["md5"][TAR_NAME]}) and put it, or the {BATCH_DIR}/ folder extracted from it, there.')


def list_images(kind, where):
  """{(split, class name): [(container, path or member)]} of an image-folder layout, files in name order."""
  found = {}
  if kind == 'folders':
    for split in SPLITS:
      split_dir = os.path.join(where, split)
      if not os.path.isdir(split_dir):
        continue
      for name in sorted(os.listdir(split_dir)):
        class_dir = os.path.join(split_dir, name)
        if os.path.isdir(class_dir):
          found[(split, name)] = [(None, f'{split}/{name}/{f}') for f in sorted(os.listdir(class_dir)) if _is_image(f)]
  else:
    for path in where:
      with core.reading(path), FileSystems.open(path, compression_type='uncompressed') as f, zipfile.ZipFile(f) as z:
        for member in z.namelist():
          match = MEMBER.match(member)
          if match and _is_image(member):
            found.setdefault((match.group(1), match.group(2)), []).append((path, member))
    for key in found:
      found[key].sort(key=lambda item: item[1])
  unknown = sorted({name for _, name in found} - set(CLASSES))
  if unknown:
    raise ValueError(f'cifar10: class folders {unknown} are not CIFAR-10 classes ({", ".join(CLASSES)})')
  if not found:
    raise FileNotFoundError(f'cifar10: no train/<class>/<image> or test/<class>/<image> files in {where}')
  return found


def _source_id(split, name, location):
  """`train/cat/0001.jpg` for a file or zip member at any depth, so zips and folders give the same records."""
  return f'{split}/{name}/{location.split("/")[-1]}'


def plan(input_dir):
  kind, where = locate(input_dir)
  extra = {'input_format': kind, 'expected': EXPECTED, 'download': DOWNLOADS,
           'class_order': 'official label order (batches.meta)'}
  if kind in ('batches', 'tar'):
    if kind == 'batches':
      meta = load_batch(_read_bytes(os.path.join(where, META)), META)
      sources = [os.path.join(where, n) for n in (META,) + BATCHES['train'] + BATCHES['test']]
    else:
      meta = load_batch(_read_tar_members(where, {META})[META], META)
      sources = [where]
    names = [n.decode('utf-8') if isinstance(n, bytes) else str(n) for n in meta.get('label_names', [])]
    if tuple(names) != CLASSES:
      raise ValueError(f'cifar10: {META} names the classes {names}, expected {list(CLASSES)}')
  else:
    found = list_images(kind, where)
    sources = where if kind == 'zips' else []
    extra['missing'] = {'splits': [s for s in SPLITS if not any(k[0] == s for k in found)],
                        'classes': sorted(f'{s}/{n}' for s in SPLITS for n in CLASSES if (s, n) not in found)}
  return core.Plan(dataset='cifar10', input_dir=input_dir, classes=[core.ClassInfo(n, None) for n in CLASSES],
                   image_shape=(32, 32, 3), sources=sources, resize=False, splits=SPLITS, extra=extra)


def work_items(the_plan):
  """('batch', folder, split, batch, start) | ('tar', archive, split, batch) | ('files', split, class id, [loc])."""
  kind, where = locate(the_plan.input_dir)
  if kind == 'batches':
    items = []
    for split in SPLITS:
      for batch in BATCHES[split]:
        with FileSystems.open(os.path.join(where, batch), compression_type='uncompressed') as f:
          size = len(batch_images(load_batch(f.read(), batch), batch)[1])
        items += [('batch', where, split, batch, start) for start in range(0, size, CHUNK)]
    return items
  if kind == 'tar':
    return [('tar', where, split, batch) for split in SPLITS for batch in BATCHES[split]]
  items = []
  for (split, name), files in sorted(list_images(kind, where).items()):
    for start in range(0, len(files), CHUNK):
      items.append(('files', split, CLASSES.index(name), files[start:start + CHUNK]))
  return items


def _read_item(item, input_dir):
  if item[0] in ('batch', 'tar'):
    if item[0] == 'batch':
      _, folder, split, batch, start = item
      data, stop = _read_bytes(os.path.join(folder, batch)), start + CHUNK
    else:
      _, archive, split, batch = item
      data, start, stop = _read_tar_members(archive, {batch})[batch], 0, None
    images, labels = batch_images(load_batch(data, batch), batch)
    for i in range(start, len(images) if stop is None else min(stop, len(images))):
      yield core.RawImage(class_id=int(labels[i]), split=split, source_id=f'{batch}/{i:05d}', data=images[i])
    return
  _, split, class_id, files = item
  name = CLASSES[class_id]
  with core.MemberReader() as reader:
    for container, location in files:
      yield core.RawImage(class_id=class_id, split=split, source_id=_source_id(split, name, location),
                          data=reader.read(input_dir, container, location))


def read(the_plan):
  work = work_items(the_plan)

  @beam.ptransform_fn
  def _read(pbegin):
    images = (pbegin | core.create_from(work, 'Chunks')
              | 'Images' >> beam.FlatMap(_read_item, input_dir=the_plan.input_dir))
    if work and work[0][0] == 'tar':  # Six batches, one worker each: spread the decoding over all workers.
      images |= 'SpreadImages' >> beam.Reshuffle()
    return images
  return _read()  # pylint: disable=no-value-for-parameter

"""Stanford Cars (Krause et al. 2013): the `cars_train` images, cropped to their devkit bounding boxes.

Input folder: the devkit's `cars_train_annos.mat` and `cars_meta.mat` (there or in its `devkit/` folder, as
car_devkit.tgz extracts) and the images as a `cars_train/` folder, `cars_train.tgz`, or a zip holding
`cars_train/*.jpg` (`--option images=PATH` names another folder or archive). Only the 8,144 train images are used,
as in the sparse-MAML reference. Classes are the devkit classes in class_id order; the split is Chen et al.'s
class-index rule over that order (class_id k -> index k - 1; train if i % 2 == 0, val if i % 4 == 1, test if
i % 4 == 3: 98/49/49 classes).

Each image is cropped to its box before the 84x84x3 resize. The reference crops with PIL's box (x1, y1, x2, y2),
which keeps pixels x1..x2-1, so the inclusive box handed to core is (x1, y1, x2 - 1, y2 - 1). Some copies of
cars_train (e.g. github.com/fmejbah/car_dataset1) hold images already cut to exactly that box; an image whose size
is (x2 - x1, y2 - y1) is therefore kept whole (cropping it again would cut the car, or fail). This cannot misfire
on an original image: one that small with its box inside it has x1 = y1 = 0, so the box is the whole image anyway.
The spec counts both kinds under `crop`.
When the input holds only part of the images (a sample), the classes without any image are left out, but every
converted class keeps the split of its devkit index; the spec counts the missing classes and images.
"""
import io
import os
import tarfile
import zipfile

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
import numpy as np

from pipelines import core
from pipelines.datasets import cub

ANNOTATIONS = 'cars_train_annos.mat'
META = 'cars_meta.mat'
IMAGES = 'cars_train'
EXPECTED = {'classes': {'train': 98, 'val': 49, 'test': 49}, 'images': 8144}  # The full cars_train.
TAR_NAMES = ('cars_train.tgz', 'cars_train.tar.gz', 'cars_train.tar')
# For users who are online; never used by the pipeline or tests. MD5s as published with torchvision's loader.
DOWNLOADS = {
    'cars_train.tgz': {'url': 'http://ai.stanford.edu/~jkrause/car196/cars_train.tgz',
                       'md5': '065e5b463ae28d29e77c1b4b166cfe61'},
    'car_devkit.tgz': {'url': 'https://ai.stanford.edu/~jkrause/cars/car_devkit.tgz',
                       'md5': 'c3b158d763b6e2245038c8ad08e45376'},
    'note': 'The Stanford pages are often offline; the same files are mirrored on Kaggle and GitHub. '
            'Non-commercial research use only.',
}


def find_devkit_file(input_dir, name):
  for folder in (input_dir, os.path.join(input_dir, 'devkit')):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(
      f'cars: {name} not found in {input_dir} or {os.path.join(input_dir, "devkit")}. It is in the devkit, '
      f'car_devkit.tgz from {DOWNLOADS["car_devkit.tgz"]["url"]}: extract it into {input_dir}.')


def _loadmat(path):
  try:
    from scipy import io as sio  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('cars: reading the devkit .mat files needs scipy (pip install scipy)') from None
  return sio.loadmat(path)


def _scalar(value):
  return np.asarray(value).ravel()[0]


def load_meta(path):
  """The devkit class names; list position k - 1 holds class_id k."""
  mat = _loadmat(path)
  if 'class_names' not in mat:
    raise ValueError(f'{path}: no class_names cell array (is this the devkit cars_meta.mat?)')
  return [str(_scalar(n)).strip() for n in mat['class_names'].ravel()]


def load_annotations(path, num_classes):
  """[(fname, class_id 1-based, (x1, y1, x2, y2))] from the devkit's `annotations` struct array."""
  mat = _loadmat(path)
  table = mat.get('annotations')
  fields = ('bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2', 'class', 'fname')
  if table is None or table.dtype.names is None or not set(fields) <= set(table.dtype.names):
    raise ValueError(f'{path}: expected an `annotations` struct array with fields {", ".join(fields)} '
                     f'(the devkit cars_train_annos.mat; cars_test_annos.mat has no classes)')
  out = []
  for row in table.ravel():
    x1, y1, x2, y2, label = (int(_scalar(row[f])) for f in fields[:5])
    if not 1 <= label <= num_classes:
      raise ValueError(f'{path}: {_scalar(row["fname"])} has class {label}, outside 1..{num_classes}')
    out.append((os.path.basename(str(_scalar(row['fname']))), label, (x1, y1, x2, y2)))
  return out


def locate_images(input_dir, images=None):
  """('dir' | 'zip' | 'tar', path) of the train images."""
  if images:
    if os.path.isdir(images):
      return 'dir', images
    if zipfile.is_zipfile(images):
      return 'zip', images
    if os.path.isfile(images):
      return 'tar', images
    raise FileNotFoundError(f'cars: images={images} does not exist')
  if os.path.isdir(os.path.join(input_dir, IMAGES)):
    return 'dir', os.path.join(input_dir, IMAGES)
  for name in TAR_NAMES:
    if os.path.isfile(os.path.join(input_dir, name)):
      return 'tar', os.path.join(input_dir, name)
  for name in sorted(os.listdir(input_dir)):
    path = os.path.join(input_dir, name)
    if name.endswith('.zip') and zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as z:
        if any(n.startswith(IMAGES + '/') for n in z.namelist()):
          return 'zip', path
  raise FileNotFoundError(
      f'cars: no {IMAGES}/ folder, cars_train.tgz or zip of {IMAGES}/*.jpg in {input_dir}. Download '
      f'cars_train.tgz from {DOWNLOADS["cars_train.tgz"]["url"]} (MD5 {DOWNLOADS["cars_train.tgz"]["md5"]}) and '
      f'put it (or the {IMAGES}/ folder extracted from it) there.')


def _image_name(member):
  """Archive member -> file name when it is a cars_train image, else None."""
  folder, _, name = member.rpartition('/')
  return name if folder.rpartition('/')[2] == IMAGES and name.lower().endswith('.jpg') else None


def _size(fileobj):
  """(width, height) from an image header (PIL does not decode the pixels here); None when unreadable."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(fileobj) as image:
      return image.size
  except Exception:  # pylint: disable=broad-except  (core counts the undecodable image as bad later)
    return None


def list_images(kind, path):
  """{file name: (member path, (width, height))} of the images the input holds (member = file name in a folder)."""
  if kind == 'dir':
    names = [n for n in os.listdir(path) if n.lower().endswith('.jpg')]
    return {n: (n, _size(os.path.join(path, n))) for n in names}
  if kind == 'zip':
    with core.reading(path), zipfile.ZipFile(path) as z:
      return {_image_name(n): (n, _size(z.open(n))) for n in z.namelist() if _image_name(n)}
  found = {}
  with core.reading(path), tarfile.open(path, mode='r|*') as tar:
    for member in tar:
      if member.isfile() and _image_name(member.name):
        found[_image_name(member.name)] = (member.name, _size(io.BytesIO(tar.extractfile(member).read())))
  return found


def crop_box(bbox, size):
  """The inclusive box for core, or None when the image already is the box's content (see the module doc)."""
  x1, y1, x2, y2 = bbox
  if size == (x2 - x1, y2 - y1):
    return None
  return (x1, y1, x2 - 1, y2 - 1)


def index(input_dir, images=None):
  """Everything plan() and read() need: names, per-class (member, file, box) lists, what is missing."""
  names = load_meta(find_devkit_file(input_dir, META))
  annotations = load_annotations(find_devkit_file(input_dir, ANNOTATIONS), len(names))
  kind, path = locate_images(input_dir, images)
  present = list_images(kind, path)
  per_class, missing = {}, {}
  for fname, label, bbox in annotations:
    if fname in present:
      member, size = present[fname]
      per_class.setdefault(label, []).append((member, fname, crop_box(bbox, size)))
    else:
      missing[label] = missing.get(label, 0) + 1
  annotated = {fname for fname, _, _ in annotations}
  return {'names': names, 'kind': kind, 'path': path, 'per_class': per_class, 'missing': missing,
          'unannotated': sorted(set(present) - annotated), 'num_annotations': len(annotations)}


def plan(input_dir, image_size='84', images=None):
  if not input_dir:
    raise ValueError('--input_dir is required for cars (the devkit .mat files and cars_train images)')
  idx = index(input_dir, images)
  names = idx['names']
  if not idx['per_class']:
    raise FileNotFoundError(f'cars: none of the {idx["num_annotations"]} annotated images is in {idx["path"]}')
  labels = sorted(idx['per_class'])
  classes = [core.ClassInfo(names[k - 1], cub.split_of_index(k - 1), {'devkit_class_id': k}) for k in labels]
  absent = [k for k in range(1, len(names) + 1) if k not in idx['per_class']]
  sources = [find_devkit_file(input_dir, META), find_devkit_file(input_dir, ANNOTATIONS)]
  size = int(image_size)
  return core.Plan(
      dataset='cars', input_dir=input_dir, classes=classes, image_shape=(size, size, 3),
      sources=sources + ([idx['path']] if idx['kind'] != 'dir' else []),
      options={'image_size': size, **({'images': images} if images else {})},
      extra={'split_rule': cub.SPLIT_RULE.replace('official class order', 'devkit class_id order'),
             'crop': {'rule': 'devkit box; PIL box (x1, y1, x2, y2) as in the reference, i.e. inclusive '
                              '(x1, y1, x2 - 1, y2 - 1); images already of the box size are kept whole',
                      'cropped': sum(1 for files in idx['per_class'].values() for f in files if f[2]),
                      'already_cropped': sum(1 for files in idx['per_class'].values() for f in files if not f[2])},
             'input_layout': idx['kind'], 'expected': EXPECTED,
             'missing': {'classes': len(absent), 'class_names': [names[k - 1] for k in absent],
                         'images': sum(idx['missing'].values()),
                         'images_of_converted_classes': sum(idx['missing'].get(k, 0) for k in labels),
                         'unannotated_files': len(idx['unannotated']),
                         'unannotated_examples': idx['unannotated'][:10]},
             'download': DOWNLOADS})


def _read_class(item, kind, path):
  class_id, split, files = item
  if kind == 'zip':
    with core.reading(path), FileSystems.open(path, compression_type='uncompressed') as f, zipfile.ZipFile(f) as z:
      for member, fname, box in files:
        yield core.RawImage(class_id, split, fname, z.read(member), bbox=box)
    return
  for member, fname, box in files:
    with FileSystems.open(os.path.join(path, member), compression_type='uncompressed') as f:
      yield core.RawImage(class_id, split, fname, f.read(), bbox=box)


def _read_tar(path, wanted):
  with core.reading(path), FileSystems.open(path, compression_type='uncompressed') as f, \
      tarfile.open(fileobj=f, mode='r|*') as tar:
    for member in tar:
      if member.isfile() and member.name in wanted:
        class_id, split, fname, box = wanted[member.name]
        yield core.RawImage(class_id, split, fname, tar.extractfile(member).read(), bbox=box)


def read(the_plan):
  idx = index(the_plan.input_dir, the_plan.options.get('images'))
  kind, path = idx['kind'], idx['path']
  work = [(i, c.split, idx['per_class'][c.attrs['devkit_class_id']]) for i, c in enumerate(the_plan.classes)]

  @beam.ptransform_fn
  def _read(pbegin):
    if kind != 'tar':
      return (pbegin | core.create_from(work, 'Classes')
              | 'Images' >> beam.FlatMap(_read_class, kind=kind, path=path))
    wanted = {member: (i, split, fname, box) for i, split, files in work for member, fname, box in files}
    # A gzipped tar is read by one worker; the Reshuffle hands its images to all workers for decoding.
    return (pbegin | core.create_from([path], 'Archive')
            | 'Images' >> beam.FlatMap(_read_tar, wanted=wanted)
            | 'SpreadImages' >> beam.Reshuffle())
  return _read()  # pylint: disable=no-value-for-parameter

"""CUB-200-2011 (Wah et al. 2011) with the few-shot class split of Chen et al. 2019.

Input (any of): the folder holding `CUB_200_2011/`, the `CUB_200_2011/` folder itself, its `images/` folder
(`NNN.Name/*.jpg`), or a folder holding the official `CUB_200_2011.tgz` (read as a stream, never extracted).
Classes are the bird folders in folder-number order. The split is the class-index rule of Chen et al.
("A Closer Look at Few-shot Classification"), which the sparse-MAML repository's `utils/assets/cub/*.json` lists
follow: 0-based index i = folder number - 1; train if i % 2 == 0, val if i % 4 == 1, test if i % 4 == 3
(100/50/50 classes). The whole image is kept (no bounding-box crop, as in the reference) and resized to 84x84x3.
"""
import os
import re
import tarfile

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import core

NUM_CLASSES = 200
EXPECTED = {'classes': {'train': 100, 'val': 50, 'test': 50}, 'images': 11788}  # The full official set.
CLASS_DIR = re.compile(r'^(\d{3})\.(.+)$')
TGZ_NAMES = ('CUB_200_2011.tgz', 'CUB_200_2011.tar.gz', 'CUB_200_2011.tar')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
SPLIT_RULE = ('Chen et al. 2019 class-index rule: 0-based index i in the official class order; train if i % 2 == 0, '
              'val if i % 4 == 1, test if i % 4 == 3')
# For users who are online; never used by the pipeline or tests.
DOWNLOADS = {
    'url': 'https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz '
           '(formerly http://www.vision.caltech.edu/visipedia-data/CUB-200-2011/CUB_200_2011.tgz)',
    'md5': {'CUB_200_2011.tgz': '97eceeb196236b17998738112f37df78'},
}


def split_of_index(index):
  """The split of the class at 0-based `index` in the official class order (Chen et al. 2019)."""
  return 'train' if index % 2 == 0 else 'val' if index % 4 == 1 else 'test'


def class_number(name):
  """`'017.Cardinal'` -> 17, or None for a name that is not a CUB class folder."""
  match = CLASS_DIR.match(name)
  return int(match.group(1)) if match else None


def _is_image(name):
  return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith('.')


def locate(input_dir):
  """('dir', images folder) or ('tar', archive path) for the accepted input layouts."""
  if input_dir and os.path.isfile(input_dir) and input_dir.endswith(TGZ_NAMES):
    return 'tar', input_dir
  for images in (os.path.join(input_dir, 'CUB_200_2011', 'images'), os.path.join(input_dir, 'images'), input_dir):
    if os.path.isdir(images) and any(class_number(n) for n in os.listdir(images)):
      return 'dir', images
  for name in TGZ_NAMES:
    if os.path.isfile(os.path.join(input_dir, name)):
      return 'tar', os.path.join(input_dir, name)
  raise FileNotFoundError(
      f'cub: no CUB_200_2011/images/NNN.Name/*.jpg folders and no CUB_200_2011.tgz in {input_dir}. Download '
      f'CUB_200_2011.tgz from {DOWNLOADS["url"]} (MD5 {DOWNLOADS["md5"]["CUB_200_2011.tgz"]}) and put it, or the '
      f'CUB_200_2011/ folder extracted from it, there.')


def _tar_class_and_file(member_name):
  """`CUB_200_2011/images/017.Cardinal/x.jpg` -> ('017.Cardinal', 'x.jpg'); None for other members."""
  parts = member_name.split('/')
  if len(parts) >= 3 and parts[-3] == 'images' and class_number(parts[-2]) and _is_image(parts[-1]):
    return parts[-2], parts[-1]
  return None


def list_classes(kind, path):
  """{class folder: number of image files}, read from the folder tree or the archive's member names."""
  counts = {}
  if kind == 'dir':
    for name in os.listdir(path):
      if class_number(name) and os.path.isdir(os.path.join(path, name)):
        counts[name] = sum(1 for f in os.listdir(os.path.join(path, name)) if _is_image(f))
  else:
    for name, _, _ in _tar_images(path):
      counts[name] = counts.get(name, 0) + 1
  return counts


def _tar_images(path):
  """(class folder, file name, read()) of every image of the archive, streamed once (call read() at once)."""
  with core.reading(path), FileSystems.open(path, compression_type='uncompressed') as f, \
      tarfile.open(fileobj=f, mode='r|*') as tar:
    for member in tar:
      found = member.isfile() and _tar_class_and_file(member.name)
      if found:
        yield found[0], found[1], lambda m=member: tar.extractfile(m).read()


def plan(input_dir, image_size='84'):
  if not input_dir:
    raise ValueError('--input_dir is required for cub (the CUB_200_2011 folder or CUB_200_2011.tgz)')
  kind, path = locate(input_dir)
  counts = list_classes(kind, path)
  by_number = {}
  for name in counts:
    by_number.setdefault(class_number(name), []).append(name)
  clashes = {n: names for n, names in by_number.items() if len(names) > 1}
  if clashes:
    raise ValueError(f'cub: class folders share a number in {path}: {clashes}')
  if not by_number or max(by_number) > NUM_CLASSES or min(by_number) < 1:
    raise ValueError(f'cub: class folders in {path} must be numbered 001..{NUM_CLASSES:03d}, got '
                     f'{sorted(by_number)[:3]}...{sorted(by_number)[-3:]}')
  classes = [core.ClassInfo(by_number[n][0], split_of_index(n - 1), {'index': n - 1}) for n in sorted(by_number)]
  missing = [n for n in range(1, NUM_CLASSES + 1) if n not in by_number]
  size = int(image_size)
  return core.Plan(
      dataset='cub', input_dir=input_dir, classes=classes, image_shape=(size, size, 3),
      sources=[path] if kind == 'tar' else [], options={'image_size': size},
      extra={'split_rule': SPLIT_RULE, 'crop': 'none (full image, as in the reference)',
             'input_layout': 'tgz' if kind == 'tar' else 'folders', 'expected': EXPECTED,
             'missing_classes': {'count': len(missing), 'numbers': missing},
             'empty_classes': sorted(name for name, c in counts.items() if not c), 'download': DOWNLOADS})


def _read_class(item, images_dir):
  class_id, split, name = item
  class_dir = os.path.join(images_dir, name)
  for filename in sorted(os.listdir(class_dir)):
    if _is_image(filename):
      with FileSystems.open(os.path.join(class_dir, filename), compression_type='uncompressed') as f:
        yield core.RawImage(class_id=class_id, split=split, source_id=f'{name}/{filename}', data=f.read())


def _read_tar(path, class_ids):
  """Streams the archive once; source ids match those of the folder layout, so both give the same records."""
  for name, filename, read in _tar_images(path):
    if name in class_ids:
      class_id, split = class_ids[name]
      yield core.RawImage(class_id=class_id, split=split, source_id=f'{name}/{filename}', data=read())


def read(the_plan):
  kind, path = locate(the_plan.input_dir)
  if kind == 'dir':
    work = [(i, c.split, c.name) for i, c in enumerate(the_plan.classes)]

    @beam.ptransform_fn
    def _read_dir(pbegin):
      return (pbegin | core.create_from(work, 'Classes')
              | 'Images' >> beam.FlatMap(_read_class, images_dir=path))
    return _read_dir()  # pylint: disable=no-value-for-parameter

  class_ids = {c.name: (i, c.split) for i, c in enumerate(the_plan.classes)}

  @beam.ptransform_fn
  def _read_archive(pbegin):
    # A gzipped tar is read by one worker; the Reshuffle hands its images to all workers for decoding.
    return (pbegin | core.create_from([path], 'Archive')
            | 'Images' >> beam.FlatMap(_read_tar, class_ids=class_ids)
            | 'SpreadImages' >> beam.Reshuffle())
  return _read_archive()  # pylint: disable=no-value-for-parameter

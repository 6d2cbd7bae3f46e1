"""A generic class-folder tree: `<input_dir>/<split>/<class>/<image>` (any format PIL reads).

The layout users get from most image datasets, and the one tests and small experiments write. Options:
  image_size=H (default 84; 0 keeps the native size, which must then be the same for every image), channels=1|3.
"""
import os

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import core

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.JPEG', '.JPG', '.PNG')


def list_tree(input_dir):
  """{split: {class name: [relative image paths, sorted]}} of a <split>/<class>/<image> tree."""
  tree = {}
  for split in sorted(os.listdir(input_dir)):
    split_dir = os.path.join(input_dir, split)
    if not os.path.isdir(split_dir):
      continue
    for name in sorted(os.listdir(split_dir)):
      class_dir = os.path.join(split_dir, name)
      if os.path.isdir(class_dir):
        files = sorted(f for f in os.listdir(class_dir) if f.endswith(IMAGE_EXTENSIONS))
        tree.setdefault(split, {})[name] = [os.path.join(split, name, f) for f in files]
  return tree


def plan(input_dir, dataset='folder', image_size='84', channels='3'):
  if not input_dir or not os.path.isdir(input_dir):
    raise FileNotFoundError(f'{dataset}: input directory {input_dir!r} does not exist '
                            f'(expected <split>/<class>/<image> folders)')
  tree = list_tree(input_dir)
  if not tree:
    raise FileNotFoundError(f'{dataset}: no <split>/<class>/<image> folders under {input_dir}')
  classes, files = [], []
  for split in sorted(tree):
    for name in sorted(tree[split]):
      classes.append(core.ClassInfo(name, split))
      files.append(tree[split][name])
  size, channels = int(image_size), int(channels)
  shape = (size, size, channels) if size else _native_shape(input_dir, files, channels)
  return core.Plan(dataset=dataset, input_dir=input_dir, classes=classes, image_shape=shape, sources=[],
                   resize=bool(size), splits=tuple(sorted(tree)),
                   options={'image_size': size, 'channels': channels},
                   extra={'class_files': files})


def _native_shape(input_dir, files, channels):
  first = next((f for fs in files for f in fs), None)
  if first is None:
    raise FileNotFoundError(f'no images under {input_dir}')
  with FileSystems.open(os.path.join(input_dir, first)) as f:
    image = core.to_pil(f.read())
  return (image.height, image.width, channels)


def _read_class(item, input_dir):
  class_id, split, paths = item
  for path in paths:
    with FileSystems.open(os.path.join(input_dir, path), compression_type='uncompressed') as f:
      yield core.RawImage(class_id=class_id, split=split, source_id=path, data=f.read())


def read(the_plan):
  work = [(i, c.split, files) for i, (c, files) in enumerate(zip(the_plan.classes, the_plan.extra['class_files']))]
  the_plan.extra = {}  # The file lists are work items, not spec content.

  @beam.ptransform_fn
  def _read(pbegin):
    return (pbegin | core.create_from(work, 'Classes')
            | 'Images' >> beam.FlatMap(_read_class, input_dir=the_plan.input_dir))
  return _read()  # pylint: disable=no-value-for-parameter

"""miniImageNet with the Ravi & Larochelle (2017) split: 100 ImageNet classes, 64/16/20, 600 images each.

Input: the split files `train.csv`, `val.csv`, `test.csv` (`filename,label` rows, label = wnid), looked up in
`--option split_dir=DIR` or else in the input directory, plus the images, in the input directory, in either layout,
extracted or in any number of zips there:
  * flat: `images/<filename>` (Ravi & Larochelle's pack; full-size images);
  * grouped: `<split>/<wnid>/<filename>` (e.g. `miniimagenet_84x84_sample100.zip`).
Images are found by their file name, so both layouts (and zips with an extra top folder) give the same records; in the
grouped layout a file in the folder of another wnid than its CSV label is an error.

Classes are numbered in CSV order (train, then val, then test; first appearance within each file); a class's split
is the file that lists it. Images are resized to 84x84x3 with LANCZOS (`--option image_size=N` changes it); the
source id of an image is its CSV file name, and records are in file-name order.

Listed images that are absent (the shared sample holds 100 of each class's 600) are not an error: what is present is
converted, each class records attrs `listed` and `missing`, and the spec's `missing_images` gives the totals per split
(and `missing_classes` the classes with no image at all; they have no records). Images that no CSV lists are counted
in `unlisted_images` and not converted.
"""
import csv
import io
import os
import re
import zipfile

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import core

SPLITS = ('train', 'val', 'test')
EXPECTED = {'classes': {'train': 64, 'val': 16, 'test': 20}, 'images_per_class': 600}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
WNID = re.compile(r'^n\d{8}$')
CHUNK = 300  # Images per work item.
# For users who are online; never used by the pipeline or tests.
DOWNLOADS = {
    'split_files': 'https://github.com/twitter-research/meta-learning-lstm/tree/master/data/miniImagenet '
                   '(train.csv, val.csv, test.csv; MIT licence)',
    'images': 'the listed ILSVRC-2012 train images (https://image-net.org, registration, non-commercial research '
              'terms), e.g. as the `images/` folder made by that repository\'s data script; any miniImageNet pack '
              'with the same file names works',
}


def _read_text(path):
  with FileSystems.open(path, compression_type='uncompressed') as f:
    return f.read().decode('utf-8-sig')


def find_split_file(split_dir, split):
  path = os.path.join(split_dir, f'{split}.csv')
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'miniimagenet: split file {split}.csv not found in {split_dir}. Get train.csv, val.csv and test.csv from '
        f'{DOWNLOADS["split_files"]} and put them there (or pass --option split_dir=DIR).')
  return path


def parse_split_file(text, path):
  """[(filename, wnid)] of a `filename,label` CSV, in file order."""
  rows = [r for r in csv.reader(io.StringIO(text)) if r and any(f.strip() for f in r)]
  if rows and [f.strip().lower() for f in rows[0]] == ['filename', 'label']:
    rows = rows[1:]
  out = []
  for row in rows:
    if len(row) != 2 or not WNID.match(row[1].strip()):
      raise ValueError(f'miniimagenet: {path}: expected `filename,wnid` rows, got {",".join(row)!r}')
    out.append((row[0].strip(), row[1].strip()))
  return out


def _is_image(name):
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.split('/')[-1].startswith('.')


def _parent(location):
  parts = location.split('/')
  return parts[-2] if len(parts) > 1 else ''


def index_images(input_dir):
  """{file name: (zip path or None, member or relative path, parent folder name)} of every image in the input."""
  index = {}

  def add(name, location):
    if name in index:
      first = index[name][1] if index[name][0] is None else f'{index[name][0]}:{index[name][1]}'
      here = location[1] if location[0] is None else f'{location[0]}:{location[1]}'
      raise ValueError(f'miniimagenet: image {name} is in the input twice ({first} and {here}); keep one layout')
    index[name] = location

  for entry in sorted(os.listdir(input_dir)):
    path = os.path.join(input_dir, entry)
    if entry.endswith('.zip') and os.path.isfile(path):
      with core.reading(path), FileSystems.open(path, compression_type='uncompressed') as f, zipfile.ZipFile(f) as z:
        for member in z.namelist():
          if _is_image(member):
            add(member.split('/')[-1], (path, member, _parent(member)))
    elif entry in ('images',) + SPLITS and os.path.isdir(path):
      for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
          if _is_image(name):
            rel = os.path.relpath(os.path.join(root, name), input_dir).replace(os.sep, '/')
            add(name, (None, rel, _parent(rel)))
  return index


def scan(input_dir, split_dir=None):
  """Split files, classes in CSV order and, per class, the present images and the missing file names."""
  if not input_dir or not os.path.isdir(input_dir):
    raise FileNotFoundError(f'miniimagenet: input directory {input_dir!r} does not exist')
  split_dir = split_dir or input_dir
  split_files = {split: find_split_file(split_dir, split) for split in SPLITS}
  index = index_images(input_dir)
  classes, by_wnid, listed = [], {}, set()
  for split in SPLITS:
    for filename, wnid in parse_split_file(_read_text(split_files[split]), split_files[split]):
      if filename in listed:
        raise ValueError(f'miniimagenet: {filename} is listed twice in the split files')
      listed.add(filename)
      if wnid not in by_wnid:
        by_wnid[wnid] = {'wnid': wnid, 'split': split, 'present': [], 'missing': []}
        classes.append(by_wnid[wnid])
      c = by_wnid[wnid]
      if c['split'] != split:
        raise ValueError(f'miniimagenet: class {wnid} is in both {c["split"]}.csv and {split}.csv')
      if filename not in index:
        c['missing'].append(filename)
        continue
      container, location, parent = index[filename]
      if WNID.match(parent) and parent != wnid:
        raise ValueError(f'miniimagenet: {location} is in the folder of {parent}, but {split}.csv labels it {wnid}')
      c['present'].append((filename, container, location))
  for c in classes:
    c['present'].sort()
  if not any(c['present'] for c in classes):
    raise FileNotFoundError(
        f'miniimagenet: none of the {len(listed)} images listed in the split files is in {input_dir} (as '
        f'images/<file>, <split>/<wnid>/<file>, or in a zip there). Images: {DOWNLOADS["images"]}.')
  unlisted = sum(1 for name in index if name not in listed)
  zips = sorted({container for c in classes for _, container, _ in c['present'] if container})
  return split_files, classes, unlisted, zips


def plan(input_dir, split_dir=None, image_size='84'):
  split_files, classes, unlisted, zips = scan(input_dir, split_dir)
  infos = [core.ClassInfo(c['wnid'], c['split'], {'listed': len(c['present']) + len(c['missing']),
                                                  'missing': len(c['missing'])}) for c in classes]
  missing = {'count': sum(len(c['missing']) for c in classes),
             'per_split': {s: sum(len(c['missing']) for c in classes if c['split'] == s) for s in SPLITS},
             'examples': [m for c in classes for m in c['missing']][:5]}
  listed = {s: {'classes': sum(1 for c in classes if c['split'] == s),
                'images': sum(len(c['present']) + len(c['missing']) for c in classes if c['split'] == s)}
            for s in SPLITS}
  layouts = sorted({'grouped' if WNID.match(_parent(location)) else 'flat'
                    for c in classes for _, _, location in c['present']})
  size = int(image_size)
  return core.Plan(
      dataset='miniimagenet', input_dir=input_dir, classes=infos, image_shape=(size, size, 3),
      sources=list(split_files.values()) + zips, options={'image_size': size, 'split_dir': split_dir},
      extra={'split_files': listed, 'expected': EXPECTED, 'missing_images': missing,
             'missing_classes': [c['wnid'] for c in classes if not c['present']], 'unlisted_images': unlisted,
             'input_layout': {'layouts': layouts, 'zipped': bool(zips)},
             'class_order': 'split files in order train, val, test; first appearance within each',
             'download': DOWNLOADS})


def work_items(the_plan):
  """(class id, split, [(file name, zip path or None, member or relative path)]) chunks."""
  _, classes, _, _ = scan(the_plan.input_dir, the_plan.options['split_dir'])
  return [(class_id, c['split'], c['present'][start:start + CHUNK])
          for class_id, c in enumerate(classes) for start in range(0, len(c['present']), CHUNK)]


def _read_chunk(item, input_dir):
  class_id, split, files = item
  with core.MemberReader() as reader:
    for filename, container, location in files:
      yield core.RawImage(class_id=class_id, split=split, source_id=filename,
                          data=reader.read(input_dir, container, location))


def read(the_plan):
  work = work_items(the_plan)

  @beam.ptransform_fn
  def _read(pbegin):
    return (pbegin | core.create_from(work, 'Chunks')
            | 'Images' >> beam.FlatMap(_read_chunk, input_dir=the_plan.input_dir))
  return _read()  # pylint: disable=no-value-for-parameter

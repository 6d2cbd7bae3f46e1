"""tieredImageNet (Ren et al. 2018) from an ImageNet class-folder tree plus the wnid split lists.

Input: `<input_dir>/<wnid>/*.JPEG` (the extracted ILSVRC-2012 train set; `<input_dir>/train/<wnid>/` works too) and
the three split lists `train.csv`, `val.csv`, `test.csv` (or `.txt`), looked up in `--option split_dir=DIR` or else
in the input directory. Each line is `wnid[,category wnid]`; blank lines and `#` comments are ignored, and a header
line is skipped. These are the `tiered-imagenet` split files of Ren et al.'s few-shot-ssl-public repository
(`fewshot/data/tiered_imagenet_split/{train,val,test}.csv`): 608 ILSVRC synsets (351/97/160) under 34 categories
(20/6/8). The synset names are optional: a `words.txt` (ImageNet's `wnid<TAB>words`, also in that folder) or
ILSVRC's `LOC_synset_mapping.txt` next to the split lists adds human-readable names to the spec.

Classes are numbered in split-list order (train, then val, then test; line order inside a list); the spec records
each class's category. Images are resized to 84x84x3 (`--option image_size=N` changes it). The work is per class,
then per image, so the 779k images spread over all workers. Listed synsets without a folder are an error unless
`--option allow_missing=true`; then they are left out and listed in the spec's `missing_classes`.
"""
import csv
import io
import os
import re

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import core

SPLITS = ('train', 'val', 'test')
EXPECTED = {'classes': {'train': 351, 'val': 97, 'test': 160}, 'categories': {'train': 20, 'val': 6, 'test': 8},
            'images': 779165}
IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png')
NAME_FILES = ('words.txt', 'LOC_synset_mapping.txt')
WNID = re.compile(r'^n\d{8}$')
# For users who are online; never used by the pipeline or tests.
DOWNLOADS = {
    'images': 'ILSVRC2012_img_train.tar (138 GB, MD5 1d675b47d978889d74fa0da5fadfb00e) from '
              'https://image-net.org/challenges/LSVRC/2012/ (registration; non-commercial research terms). '
              'Extract it and the per-class tars inside it into <input_dir>/<wnid>/*.JPEG.',
    'split_lists': 'https://github.com/renmengye/few-shot-ssl-public/tree/master/fewshot/data/'
                   'tiered_imagenet_split ({train,val,test}.csv: wnid,category wnid; words.txt: synset names)',
}


def _is_local(path):
  return '://' not in path


def _dir_exists(path):
  if _is_local(path):
    return os.path.isdir(path)
  return bool(FileSystems.match([FileSystems.join(path, '*')], limits=[1])[0].metadata_list)


def _read_text(path):
  with FileSystems.open(path, compression_type='uncompressed') as f:
    return f.read().decode('utf-8-sig')


def parse_split_list(text, path):
  """[(wnid, category or None)] from a split list: `wnid[,category]` lines (CSV) or whitespace-separated TXT."""
  rows = []
  for line in text.splitlines():
    line = line.strip()
    if not line or line.startswith('#'):
      continue
    fields = next(csv.reader(io.StringIO(line))) if ',' in line else line.split()
    rows.append([f.strip() for f in fields])
  # A header is a first row that is not a synset while the rows after it are.
  if len(rows) > 1 and not WNID.match(rows[0][0]) and WNID.match(rows[1][0]):
    rows = rows[1:]
  out = []
  for fields in rows:
    if len(fields) > 2:
      raise ValueError(f'{path}: expected `wnid[,category]` per line, got {",".join(fields)!r}')
    out.append((fields[0], fields[1] if len(fields) > 1 and fields[1] else None))
  return out


def find_split_file(split_dir, split):
  for ext in ('.csv', '.txt'):
    path = FileSystems.join(split_dir, split + ext)
    if FileSystems.exists(path):
      return path
  raise FileNotFoundError(
      f'tieredimagenet: split list {split}.csv (or {split}.txt) not found in {split_dir}. Get train.csv, val.csv '
      f'and test.csv from {DOWNLOADS["split_lists"]} and put them there, or pass --option split_dir=DIR.')


def read_names(split_dir):
  """{wnid: words} from words.txt / LOC_synset_mapping.txt in the split folder, or {} (names are optional)."""
  for name in NAME_FILES:
    path = FileSystems.join(split_dir, name)
    if FileSystems.exists(path):
      names = {}
      for line in _read_text(path).splitlines():
        wnid, _, words = line.strip().partition('\t' if '\t' in line else ' ')
        if WNID.match(wnid):
          names[wnid] = words.strip()
      return path, names
  return None, {}


def find_image_root(input_dir, wnids):
  """The folder that holds the synset folders: the input dir itself or its `train/` (ILSVRC layout)."""
  for root in (input_dir, FileSystems.join(input_dir, 'train')):
    if any(_dir_exists(FileSystems.join(root, w)) for w in wnids[:20]):
      return root
  raise FileNotFoundError(
      f'tieredimagenet: none of the listed synset folders ({", ".join(wnids[:3])}, ...) is in {input_dir} or '
      f'{FileSystems.join(input_dir, "train")}. Expected the ILSVRC-2012 train images as <wnid>/*.JPEG; get '
      f'{DOWNLOADS["images"]}')


def plan(input_dir, split_dir=None, image_size='84', allow_missing=False):
  if not input_dir:
    raise ValueError('--input_dir is required for tieredimagenet (the ILSVRC-2012 train class folders)')
  split_dir = split_dir or input_dir
  split_files = {split: find_split_file(split_dir, split) for split in SPLITS}
  names_file, names = read_names(split_dir)
  listed, seen = [], {}
  for split in SPLITS:
    for wnid, category in parse_split_list(_read_text(split_files[split]), split_files[split]):
      if wnid in seen:
        raise ValueError(f'tieredimagenet: synset {wnid} is listed twice ({seen[wnid]} and {split}); '
                         f'the split lists must be disjoint')
      seen[wnid] = split
      listed.append((wnid, split, category))
  if not listed:
    raise ValueError(f'tieredimagenet: the split lists in {split_dir} are empty')
  root = find_image_root(input_dir, [w for w, _, _ in listed])
  classes, missing = [], []
  for wnid, split, category in listed:
    if not _dir_exists(FileSystems.join(root, wnid)):
      missing.append(wnid)
      continue
    attrs = {'category': category} if category else {}
    if wnid in names:
      attrs['words'] = names[wnid]
    if category in names:
      attrs['category_words'] = names[category]
    classes.append(core.ClassInfo(wnid, split, attrs))
  allow_missing = str(allow_missing).lower() == 'true'  # A bool from the CLI, maybe a string from Python callers.
  if missing and not allow_missing:
    raise FileNotFoundError(
        f'tieredimagenet: {len(missing)} listed synset folders are missing under {root} '
        f'({", ".join(missing[:5])}{", ..." if len(missing) > 5 else ""}). Extract them from '
        f'ILSVRC2012_img_train.tar, or pass --option allow_missing=true to convert the others.')
  listed_counts = {'classes': {s: sum(1 for _, sp, _ in listed if sp == s) for s in SPLITS},
                   'categories': {s: len({c for _, sp, c in listed if sp == s and c}) for s in SPLITS}}
  size = int(image_size)
  return core.Plan(
      dataset='tieredimagenet', input_dir=input_dir, classes=classes, image_shape=(size, size, 3),
      sources=list(split_files.values()) + ([names_file] if names_file else []),
      options={'image_size': size, 'allow_missing': allow_missing},
      extra={'image_root': os.path.relpath(root, input_dir) if _is_local(root) else root,
             'split_lists': listed_counts, 'expected': EXPECTED,
             'missing_classes': {'count': len(missing), 'wnids': missing},
             'class_order': 'split lists in order train, val, test; line order within each',
             'download': DOWNLOADS})


def _list_class(item, root):
  """(class_id, split, wnid) -> (class_id, split, path) for every image file of the synset, in name order."""
  class_id, split, wnid = item
  skipped = beam.metrics.Metrics.counter('wtl_tf', 'files_skipped')
  paths = sorted(m.path for m in FileSystems.match([FileSystems.join(root, wnid, '*')])[0].metadata_list)
  for path in paths:
    if path.lower().endswith(IMAGE_EXTENSIONS):
      yield class_id, split, path
    else:
      skipped.inc()


def _read_image(item):
  class_id, split, path = item
  with FileSystems.open(path, compression_type='uncompressed') as f:
    data = f.read()
  wnid_dir, filename = os.path.split(path)
  return core.RawImage(class_id=class_id, split=split, source_id=f'{os.path.basename(wnid_dir)}/{filename}',
                       data=data)


def read(the_plan):
  root = the_plan.extra['image_root']
  root = root if not _is_local(root) else os.path.normpath(os.path.join(the_plan.input_dir, root))
  work = [(i, c.split, c.name) for i, c in enumerate(the_plan.classes)]

  @beam.ptransform_fn
  def _read(pbegin):
    # Listing is per class; the Reshuffle then spreads single images, not whole classes, over the workers.
    return (pbegin | core.create_from(work, 'Classes')
            | 'ListImages' >> beam.FlatMap(_list_class, root=root)
            | 'SpreadImages' >> beam.Reshuffle()
            | 'ReadImages' >> beam.Map(_read_image))
  return _read()  # pylint: disable=no-value-for-parameter

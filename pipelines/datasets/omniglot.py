"""Omniglot (Lake et al. 2015): 1623 handwritten characters of 50 alphabets, 20 drawers each, 105x105 1-bit PNGs.

Inputs, looked up in --input_dir (`--option format=png|npz` picks one; by default the npz form wins when present):
  * png: the official `images_background.zip` and `images_evaluation.zip`, zipped or extracted
    (`images_<set>/<Alphabet>/characterNN/XXXX_YY.png`; XXXX = official character id, YY = drawer). Every zip or
    folder whose name starts with `images_background` / `images_evaluation` is read, so the official
    `images_background_small1.zip` and `..._small2.zip` work too.
  * npz: `images_background.npz` / `images_evaluation.npz` holding `images` bool [chars, drawers, 105, 105]
    (True = white background, as PIL reads the PNGs) and `labels` [chars, drawers] = official id - the set's first id.
    They carry no names, so alphabets and folders come from ALPHABETS (the official id ranges; characterNN is
    first id + NN - 1). Images are read straight out of the compressed arrays, a chunk of characters at a time.
Both inputs give the same source ids (`images_<set>/<Alphabet>/characterNN/XXXX_YY.png`), the same classes and
byte-identical record files; only the spec's raw-content checksums differ. A partial input (e.g. only the background
set, or the small zips) converts what is there; the spec's `characters_found` says how much that was.

Class order: the sorted folder walk of the full dataset, i.e. images_background before images_evaluation, alphabets
in sorted name order (Python string order), characters by number. A character's `index` is its place in that order
among all 1623 official characters (FULL_ORDER), whatever the input holds, so splits never depend on which files are
present; class ids number the converted characters in that order (the same as `index` for the full dataset).
Records of a class are in drawer order. Characters outside the official list are an error.

Splits (`--option split=`):
  * `maml` (default): the first `num_train` (1200) characters of that order are 'train', the other 423 'test';
    `num_val=N` turns the last N of the train characters into 'val' (MAML's 1100/100/423). The MAML code cuts its
    shuffled, unsorted folder listing (random.seed(1) over os.listdir order), which no other machine can reproduce;
    the sorted order is the common reproducible reading. Train is then all 30 background alphabets plus 236 evaluation
    characters (Angelic .. Gurmukhi/character41). `rotations=true` adds each character rotated by 90, 180 and 270
    degrees (counter-clockwise, like MAML's tf.image.rot90) as extra classes in the same split: class k * C + i is
    character i rotated by 90k degrees (C = number of characters), so the unrotated classes keep ids 0..C-1.
  * `osaka`: OSAKA's order (docs/ALGORITHMS.md 5.1); OSAKA walks the folders with os.walk, in whatever order the file
    system lists them, so the sorted walk (the same order as above) stands in for it. Characters [0, 900) are
    'pretrain', [900, 1000) 'val' and the rest 'unseen' (never seen in pre-training; OSAKA's stream draws from all
    1623). attrs['osaka_index'] is that class index.
Every class has attrs set, alphabet, character, official_id, index and rotation (degrees); rotated classes also have
base_class. `alphabets=A,B` converts only those alphabets (their characters keep their index and split).

Pixel convention (the spec's `pixel_convention`): images are the 'L' version of the PNGs (background 255, ink 0),
resized to 28x28 with LANCZOS (antialiased: stroke edges become grey), then:
  * maml: inverted (`RawImage.invert`): strokes 255 on a 0 background, which is what MAML feeds its models
    (`1 - png / 255`);
  * osaka: not inverted: background 255, strokes 0; OSAKA feeds `png / 255` (our reading of [O]; docs/ALGORITHMS.md says
    only "scaled /255"). `--option invert=true|false` overrides either default.
Note: MAML's resize script calls LANCZOS on the 1-bit images, for which Pillow silently uses nearest neighbour, so
its 28x28 images are binary; here the resize is done on 'L' images and really is antialiased.
"""
import contextlib
import os
import re
import zipfile

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
import numpy as np

from pipelines import core

SETS = ('background', 'evaluation')
# The official alphabets of each set in official character-id order, with their character counts. Set s's first
# character has id 1 (background) or 965 (evaluation); each alphabet's characters follow in characterNN order.
ALPHABETS = {
    'background': (
        ('Arcadian', 26), ('Armenian', 41), ('Asomtavruli_(Georgian)', 40), ('Balinese', 24), ('Bengali', 46),
        ('Blackfoot_(Canadian_Aboriginal_Syllabics)', 14), ('Braille', 26), ('Cyrillic', 33), ('Early_Aramaic', 22),
        ('Syriac_(Estrangelo)', 23), ('Anglo-Saxon_Futhorc', 29), ('Futurama', 26), ('Grantha', 43), ('Greek', 24),
        ('Gujarati', 48), ('Hebrew', 22), ('Japanese_(hiragana)', 52),
        ('Inuktitut_(Canadian_Aboriginal_Syllabics)', 16), ('Malay_(Jawi_-_Arabic)', 40), ('Japanese_(katakana)', 47),
        ('Korean', 40), ('Latin', 26),
        ('Alphabet_of_the_Magi', 20), ('Mkhedruli_(Georgian)', 41), ('Burmese_(Myanmar)', 34), ('N_Ko', 33),
        ('Ojibwe_(Canadian_Aboriginal_Syllabics)', 14), ('Sanskrit', 42), ('Tagalog', 17), ('Tifinagh', 55)),
    'evaluation': (
        ('Angelic', 20), ('Atemayar_Qelisayer', 26), ('Atlantean', 26), ('Aurek-Besh', 26), ('Avesta', 26),
        ('Ge_ez', 26), ('Glagolitic', 45), ('Gurmukhi', 45), ('Kannada', 41), ('Keble', 26), ('Malayalam', 47),
        ('Manipuri', 40), ('Mongolian', 30), ('Old_Church_Slavonic_(Cyrillic)', 45), ('Oriya', 46),
        ('Syriac_(Serto)', 23), ('Sylheti', 28), ('Tengwar', 25), ('Tibetan', 42), ('ULOG', 26)),
}
FIRST_ID = {'background': 1, 'evaluation': 965}
EXPECTED = {'characters': {'background': 964, 'evaluation': 659}, 'drawers': 20, 'image_size': 105}
OSAKA_SPLITS = (('pretrain', 900), ('val', 1000))  # (split, end of its class-index range); the rest is 'unseen'.
ROTATIONS = (0, 90, 180, 270)
CHUNK = 64  # Characters per work item.
PNG_FILE = re.compile(r'^(\d{4})_(\d{2})\.png$')
CHARACTER_DIR = re.compile(r'^character(\d+)$')
# For users who are online; never used by the pipeline or tests. MD5s as listed by torchvision's Omniglot.
DOWNLOADS = {
    'url': 'https://github.com/brendenlake/omniglot/raw/master/python/ (images_background.zip, '
           'images_evaluation.zip; MIT licence)',
    'md5': {'images_background.zip': '68d2efa1b9178cc56df9314c21c6e718',
            'images_evaluation.zip': '6b91aef0f799c5bb55b94e3f2daec811'},
}


def _full_order():
  """{(alphabet, character number): (index, set)}: every official character's place in the sorted folder walk."""
  keys = sorted((SETS.index(s), alphabet, number) for s in SETS for alphabet, count in ALPHABETS[s]
                for number in range(1, count + 1))
  return {(alphabet, number): (index, SETS[s]) for index, (s, alphabet, number) in enumerate(keys)}


FULL_ORDER = _full_order()


def _flag(value):
  if isinstance(value, str):
    if value.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'omniglot: expected true or false, got {value!r}')
    return value.lower() in ('true', '1')
  return bool(value)


def _set_of(name):
  """'images_background_small1.zip' -> 'background'; None for other names."""
  for s in SETS:
    if name.startswith(f'images_{s}'):
      return s
  return None


def find_inputs(input_dir, fmt='auto'):
  """('npz', [(set, path)]) or ('png', [(set, 'zip' or 'dir', path)]) for what the input directory holds."""
  if not input_dir or not os.path.isdir(input_dir):
    raise FileNotFoundError(f'omniglot: input directory {input_dir!r} does not exist')
  names = sorted(os.listdir(input_dir))
  npz = [(_set_of(n), os.path.join(input_dir, n)) for n in names if n in ('images_background.npz',
                                                                            'images_evaluation.npz')]
  png = []
  for n in names:
    path = os.path.join(input_dir, n)
    if _set_of(n) and (n.endswith('.zip') or os.path.isdir(path)):
      png.append((_set_of(n), 'zip' if n.endswith('.zip') else 'dir', path))
  if fmt not in ('auto', 'npz', 'png'):
    raise ValueError(f'omniglot: format must be auto, npz or png, got {fmt!r}')
  if npz and fmt in ('auto', 'npz'):
    return 'npz', npz
  if png and fmt in ('auto', 'png'):
    return 'png', png
  wanted = {'auto': 'images_background.zip / images_evaluation.zip (zipped or extracted) or their .npz form',
            'png': 'images_background.zip / images_evaluation.zip (zipped or extracted)',
            'npz': 'images_background.npz / images_evaluation.npz'}[fmt]
  raise FileNotFoundError(
      f'omniglot: no {wanted} in {input_dir}. Download images_background.zip and images_evaluation.zip from '
      f'{DOWNLOADS["url"]} (MD5 {DOWNLOADS["md5"]["images_background.zip"]} and '
      f'{DOWNLOADS["md5"]["images_evaluation.zip"]}) and put them in that directory.')


def _character(set_name, alphabet, number, official_id, source, images, where):
  """One character: its place in the official order, where its images are and their source ids (drawer order)."""
  index, official_set = FULL_ORDER.get((alphabet, number), (None, None))
  if index is None or official_set != set_name:
    raise ValueError(f'omniglot: {where}: {alphabet}/character{number:02d} is not a character of the official '
                     f'{set_name} set' + (f' (it is in {official_set})' if official_set else ''))
  return {'set': set_name, 'alphabet': alphabet, 'character': f'character{number:02d}', 'index': index,
          'official_id': official_id, 'source': source, 'images': sorted(images, key=lambda item: item[1])}


def _source_id(set_name, alphabet, character, official_id, drawer):
  return f'images_{set_name}/{alphabet}/{character}/{official_id:04d}_{drawer:02d}.png'


def _png_characters(set_name, kind, path, relpaths):
  """Groups `.../<Alphabet>/characterNN/XXXX_YY.png` paths of one zip or folder into characters."""
  grouped = {}
  for rel in relpaths:
    parts = rel.split('/')
    if len(parts) < 3 or not CHARACTER_DIR.match(parts[-2]) or not PNG_FILE.match(parts[-1]):
      continue
    official_id, drawer = (int(g) for g in PNG_FILE.match(parts[-1]).groups())
    grouped.setdefault((parts[-3], parts[-2]), []).append((rel, official_id, drawer))
  out = []
  for (alphabet, character), files in grouped.items():
    ids = sorted({f[1] for f in files})
    if len(ids) != 1:
      raise ValueError(f'omniglot: {path}: {alphabet}/{character} mixes character ids {ids}')
    number = int(CHARACTER_DIR.match(character).group(1))
    images = [(rel, _source_id(set_name, alphabet, f'character{number:02d}', ids[0], drawer))
              for rel, _, drawer in files]
    out.append(_character(set_name, alphabet, number, ids[0], (kind, path), images, path))
  return out


def _list_png(set_name, kind, path):
  if kind == 'zip':
    with core.reading(path), FileSystems.open(path, compression_type='uncompressed') as f, zipfile.ZipFile(f) as z:
      relpaths = [n for n in z.namelist() if not n.endswith('/')]
  else:
    relpaths = []
    for root, dirs, files in os.walk(path):
      dirs.sort()
      rel_root = os.path.relpath(root, path)
      relpaths += [f if rel_root == '.' else f'{rel_root}/{f}'.replace(os.sep, '/') for f in sorted(files)]
  return _png_characters(set_name, kind, path, relpaths)


@contextlib.contextmanager
def open_npz_array(path, member='images.npy'):
  """Yields (shape, stream at the array's first byte) for one array of an npz, without decompressing the data."""
  with core.reading(path), FileSystems.open(path, compression_type='uncompressed') as f, zipfile.ZipFile(f) as z, \
      z.open(member) as stream:
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(stream)
    if fortran or dtype.itemsize != 1:
      raise ValueError(f'omniglot: {path}: {member} must be a C-ordered 1-byte array, got {dtype} '
                       f'(fortran={fortran})')
    yield shape, stream


def _npz_characters(set_name, path):
  """The characters of one npz, named from ALPHABETS after checking that its shape and labels fit them."""
  with open_npz_array(path) as (shape, _):
    pass
  with core.reading(path), FileSystems.open(path, compression_type='uncompressed') as f, np.load(f) as data:
    labels = data['labels']
  expected = EXPECTED['characters'][set_name]
  if len(shape) != 4 or shape[0] != expected or shape[2:] != (105, 105):
    raise ValueError(f'omniglot: {path}: images are {shape}, expected ({expected}, drawers, 105, 105) for the '
                     f'official {set_name} set')
  if labels.shape != shape[:2] or np.any(labels != np.arange(shape[0])[:, None]):
    raise ValueError(f'omniglot: {path}: labels must be [chars, drawers] with labels[i, :] == i (official id - '
                     f'{FIRST_ID[set_name]}); got {labels.shape}')
  out, offset = [], 0
  for alphabet, count in ALPHABETS[set_name]:
    for number in range(1, count + 1):
      official_id = FIRST_ID[set_name] + offset
      character = f'character{number:02d}'
      images = [(d, _source_id(set_name, alphabet, character, official_id, d + 1)) for d in range(shape[1])]
      out.append(_character(set_name, alphabet, number, official_id, ('npz', path), images, path))
      offset += 1
  return out


def scan(input_dir, fmt='auto'):
  """(format, source files, every character found in the sorted-walk order, number of duplicates skipped)."""
  fmt, inputs = find_inputs(input_dir, fmt)
  characters = []
  if fmt == 'npz':
    for set_name, path in inputs:
      characters += _npz_characters(set_name, path)
    sources = [path for _, path in inputs]
  else:
    for set_name, kind, path in inputs:
      characters += _list_png(set_name, kind, path)
    sources = [path for _, kind, path in inputs if kind == 'zip']
  # The official small zips overlap (Greek and Latin are in both); a character found twice is read from the first
  # zip or folder, provided both copies list the same images.
  unique, duplicates = {}, 0
  for c in characters:
    key = (c['alphabet'], c['character'])
    if key in unique:
      if [i[1] for i in unique[key]['images']] != [i[1] for i in c['images']]:
        raise ValueError(f'omniglot: {key[0]}/{key[1]} is in both {unique[key]["source"][1]} and '
                         f'{c["source"][1]} with different images')
      duplicates += 1
    else:
      unique[key] = c
  characters = list(unique.values())
  if not characters:
    raise FileNotFoundError(f'omniglot: no <Alphabet>/characterNN/XXXX_YY.png images in {input_dir}')
  characters.sort(key=lambda c: c['index'])
  return fmt, sources, characters, duplicates


def split_of(index, split, num_train, num_val):
  if split == 'osaka':
    return next((name for name, end in OSAKA_SPLITS if index < end), 'unseen')
  if index >= num_train:
    return 'test'
  return 'val' if index >= num_train - num_val else 'train'


def _selected(characters, alphabets):
  """The characters of the chosen alphabets (all when `alphabets` is None)."""
  if alphabets is None:
    return characters
  wanted = [a.strip() for a in alphabets.split(',')] if isinstance(alphabets, str) else list(alphabets)
  known = sorted({c['alphabet'] for c in characters})
  unknown = [a for a in wanted if a not in known]
  if unknown:
    raise ValueError(f'omniglot: alphabets {unknown} are not in the input; it has {", ".join(known)}')
  return [c for c in characters if c['alphabet'] in wanted]


def _settings(split, rotations, invert, num_train, num_val, image_size):
  if split not in ('maml', 'osaka'):
    raise ValueError(f'omniglot: split must be maml or osaka, got {split!r}')
  rotations = _flag(rotations)
  if rotations and split == 'osaka':
    raise ValueError('omniglot: rotated classes are part of the MAML convention; OSAKA has none')
  num_train, num_val = int(num_train), int(num_val)
  if not 0 <= num_val <= num_train:
    raise ValueError(f'omniglot: need 0 <= num_val <= num_train, got {num_val} and {num_train}')
  invert = (split == 'maml') if invert is None else _flag(invert)
  return {'split': split, 'rotations': rotations, 'invert': invert, 'num_train': num_train, 'num_val': num_val,
          'image_size': int(image_size)}


def class_table(characters, settings, alphabets=None):
  """[(ClassInfo, character, rotation)] in class-id order."""
  chosen = _selected(characters, alphabets)
  rotations = ROTATIONS if settings['rotations'] else (0,)
  table = []
  for k, rotation in enumerate(rotations):
    for position, c in enumerate(chosen):
      index = c['index']
      attrs = {'set': c['set'], 'alphabet': c['alphabet'], 'character': c['character'],
               'official_id': c['official_id'], 'index': index, 'rotation': rotation}
      if settings['split'] == 'osaka':
        attrs['osaka_index'] = index
      if settings['rotations']:
        attrs['base_class'] = position
      name = f'{c["alphabet"]}/{c["character"]}' + (f'/rot{rotation:03d}' if k else '')
      split = split_of(index, settings['split'], settings['num_train'], settings['num_val'])
      table.append((core.ClassInfo(name, split, attrs), c, rotation))
  return table


def _descriptions(settings):
  if settings['split'] == 'osaka':
    rule = ('OSAKA: class index [0, 900) pretrain, [900, 1000) val, the rest unseen (attrs osaka_index)')
  else:
    rule = (f'MAML: the first {settings["num_train"]} characters of the class order train'
            + (f' (the last {settings["num_val"]} of them val)' if settings['num_val'] else '') + ', the rest test'
            + ('; rotations by 90/180/270 degrees are extra classes k*C+i in the split of their character'
               if settings['rotations'] else ''))
  pixels = ('inverted: strokes 255 on a 0 background (MAML feeds 1 - png/255)' if settings['invert'] else
            'as in the PNGs: background 255, strokes 0 (OSAKA feeds png/255)')
  return rule, pixels


def plan(input_dir, split='maml', rotations=False, invert=None, num_train='1200', num_val='0', image_size='28',
         format='auto', alphabets=None):  # pylint: disable=redefined-builtin
  settings = _settings(split, rotations, invert, num_train, num_val, image_size)
  fmt, sources, characters, duplicates = scan(input_dir, format)
  table = class_table(characters, settings, alphabets)
  rule, pixels = _descriptions(settings)
  size = settings['image_size']
  splits = ('pretrain', 'val', 'unseen') if split == 'osaka' else (
      ('train', 'val', 'test') if settings['num_val'] else ('train', 'test'))
  found = {s: sum(1 for c in characters if c['set'] == s) for s in SETS}
  return core.Plan(
      dataset='omniglot', input_dir=input_dir, classes=[info for info, _, _ in table], image_shape=(size, size, 1),
      sources=sources, splits=splits,
      options={**settings, 'format': fmt, 'alphabets': alphabets},
      extra={'input_format': fmt, 'split_rule': rule, 'pixel_convention': pixels,
             'class_order': 'sorted folder walk: images_background then images_evaluation, alphabets by name, '
                            'characters by number; records in drawer order',
             'resize': f'LANCZOS on the L image to {size}x{size} (antialiased)',
             'characters_found': found, 'duplicate_characters_skipped': duplicates, 'expected': EXPECTED,
             'download': DOWNLOADS})


def work_items(the_plan):
  """Work items of at most CHUNK characters that share one zip, folder or npz: (kind, path, [entries]).

  An entry is (locator, [(class_id, rotation)], split, [(image locator, source id)]).
  """
  opts = the_plan.options
  _, _, characters, _ = scan(the_plan.input_dir, opts['format'])
  table = class_table(characters, opts, opts['alphabets'])
  by_character = {}
  for class_id, (info, c, rotation) in enumerate(table):
    key = (c['alphabet'], c['character'])
    if key not in by_character:
      by_character[key] = [c, [], info.split]
    by_character[key][1].append((class_id, rotation))
  by_source = {}
  for c, targets, split in by_character.values():
    by_source.setdefault(c['source'], []).append((c, targets, split))
  items = []
  for (kind, path), entries in sorted(by_source.items()):
    if kind == 'npz':  # Read in file order, so a work item decompresses one stretch of the array.
      entries.sort(key=lambda e: e[0]['official_id'])
    for start in range(0, len(entries), CHUNK):
      chunk = entries[start:start + CHUNK]
      items.append((kind, path, [(c['official_id'] - FIRST_ID[c['set']] if kind == 'npz' else None, targets, split,
                                  c['images']) for c, targets, split in chunk]))
  return items


def _images_of(kind, path, entries):
  """Yields (entry, image data, source id) for every image of the entries (data: PNG bytes or uint8 [105, 105])."""
  if kind == 'npz':
    with open_npz_array(path) as (shape, stream):
      per_char = int(np.prod(shape[1:]))
      position = 0
      for entry in entries:  # In file order: each seek only skips forward.
        stream.seek(stream.tell() + (entry[0] - position) * per_char)
        block = np.frombuffer(stream.read(per_char), np.uint8).reshape(shape[1:])
        position = entry[0] + 1
        # A True (white) byte may be 1 or 255; 'L' white is 255.
        pixels = np.where(block != 0, 255, 0).astype(np.uint8)
        for drawer, source_id in entry[3]:
          yield entry, pixels[drawer], source_id
  elif kind == 'zip':
    with core.reading(path), FileSystems.open(path, compression_type='uncompressed') as f, zipfile.ZipFile(f) as z:
      for entry in entries:
        for member, source_id in entry[3]:
          yield entry, z.read(member), source_id
  else:
    for entry in entries:
      for rel, source_id in entry[3]:
        with FileSystems.open(os.path.join(path, rel), compression_type='uncompressed') as f:
          yield entry, f.read(), source_id


def _read_chunk(item, invert):
  kind, path, entries = item
  for entry, data, source_id in _images_of(kind, path, entries):
    _, targets, split, _ = entry
    for class_id, rotation in targets:
      yield core.RawImage(class_id=class_id, split=split, source_id=source_id, data=data, rotation=rotation,
                          invert=invert)


def read(the_plan):
  work = work_items(the_plan)
  invert = the_plan.options['invert']

  @beam.ptransform_fn
  def _read(pbegin):
    return (pbegin | core.create_from(work, 'Chunks')
            | 'Images' >> beam.FlatMap(_read_chunk, invert=invert))
  return _read()  # pylint: disable=no-value-for-parameter

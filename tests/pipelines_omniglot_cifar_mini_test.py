"""Omniglot, CIFAR-10 and miniImageNet pipelines: generated raw data in every input format through the DirectRunner
and back through wtl_tf/data/records.py, then checks on the real data under WTL_DATA_DIR.

Fixtures: Omniglot as the npz pair (full character count, drawings only in two alphabets), the official zips and the
extracted tree; CIFAR-10 as python batches (a folder and the tar.gz) and as train/test class folders (zipped and
extracted); miniImageNet as split CSVs with a flat zip and a grouped folder tree.
"""
import csv
import io
import os
import pickle
import shutil
import tarfile
import zipfile

import numpy as np
from PIL import Image
import pytest

from pipelines import main
from pipelines.datasets import cifar10
from pipelines.datasets import miniimagenet
from pipelines.datasets import omniglot
from wtl_tf.data import records

BEAM_ARGS = ['--direct_running_mode=in_memory', '--direct_num_workers=1']


def run(dataset, input_dir, output_dir, **options):
  return main.run(dataset, str(input_dir), str(output_dir), beam_args=BEAM_ARGS, options=options, quiet=True)


def output_files(root):
  """{relative path: bytes} of everything a conversion wrote (records and spec)."""
  out = {}
  for base, _, files in os.walk(root):
    for name in files:
      path = os.path.join(base, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def record_files(root):
  return {k: v for k, v in output_files(root).items() if k.startswith('records')}


def encode(array, fmt='PNG'):
  out = io.BytesIO()
  image = Image.fromarray(np.asarray(array)) if not isinstance(array, Image.Image) else array
  image.save(out, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
  return out.getvalue()


def write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def zip_tree(folder, zip_path, prefix=''):
  """Zips every file under `folder`, member names relative to it (with an optional prefix)."""
  with zipfile.ZipFile(zip_path, 'w') as z:
    for base, _, files in sorted(os.walk(folder)):
      for name in sorted(files):
        path = os.path.join(base, name)
        z.write(path, prefix + os.path.relpath(path, folder).replace(os.sep, '/'))


# ---------------------------------------------------------------- Omniglot

# (set, alphabet, first official id, characters): facts of the official data (alphabets.csv).
LATIN = ('background', 'Latin', 683, 26)
ULOG = ('evaluation', 'ULOG', 1598, 26)
NPZ_FIRST = {'background': 1, 'evaluation': 965}
NPZ_SIZE = {'background': 964, 'evaluation': 659}
# Their places among all 1623 characters in the sorted walk (30 background alphabets, then 20 evaluation ones).
LATIN_INDEX, ULOG_INDEX = 673, 1597
DRAWERS = 2


def drawing(official_id, drawer):
  """bool [105, 105], True = white: an ink block in the top-left (its height tells characters apart) and a bar whose
  column tells drawers apart; asymmetric, so rotations show."""
  image = np.ones((105, 105), bool)
  image[5:40 + official_id % 7 * 6, 5:60] = False
  image[70:100, 80 + 5 * drawer:84 + 5 * drawer] = False
  return image


def make_omniglot_npz(root):
  for set_name in ('background', 'evaluation'):
    images = np.ones((NPZ_SIZE[set_name], DRAWERS, 105, 105), bool)
    for s, _, first, count in (LATIN, ULOG):
      if s == set_name:
        for official_id in range(first, first + count):
          for d in range(DRAWERS):
            images[official_id - NPZ_FIRST[s], d] = drawing(official_id, d)
    labels = np.repeat(np.arange(NPZ_SIZE[set_name])[:, None], DRAWERS, axis=1)
    os.makedirs(root, exist_ok=True)
    np.savez_compressed(os.path.join(root, f'images_{set_name}.npz'), images=images, labels=labels)
  return root


def make_omniglot_pngs(root, zipped):
  """The official layout (1-bit PNGs) for the two alphabets, as images_<set>.zip or extracted folders."""
  tree = os.path.join(root, 'tree')
  for set_name, alphabet, first, count in (LATIN, ULOG):
    for n in range(count):
      for d in range(DRAWERS):
        png = encode(Image.fromarray(drawing(first + n, d)).convert('1'))
        write(os.path.join(tree, f'images_{set_name}', alphabet, f'character{n + 1:02d}',
                           f'{first + n:04d}_{d + 1:02d}.png'), png)
  out = os.path.join(root, 'in')
  os.makedirs(out)
  for set_name in ('background', 'evaluation'):
    if zipped:  # The official zips hold a top folder named like the zip.
      zip_tree(os.path.join(tree, f'images_{set_name}'), os.path.join(out, f'images_{set_name}.zip'),
               prefix=f'images_{set_name}/')
    else:
      os.rename(os.path.join(tree, f'images_{set_name}'), os.path.join(out, f'images_{set_name}'))
  return out


def expected_omniglot(official_id, drawer, invert=True):
  """What the records should hold: the L image resized with LANCZOS (and inverted), computed here with PIL."""
  image = Image.fromarray(drawing(official_id, drawer).astype(np.uint8) * 255).resize((28, 28), Image.LANCZOS)
  pixels = np.asarray(image)
  return 255 - pixels if invert else pixels


@pytest.mark.beam
def test_omniglot_npz_zip_and_folder_give_identical_records(tmp_path):
  npz = make_omniglot_npz(tmp_path / 'npz')
  spec_npz = run('omniglot', npz, tmp_path / 'out_npz', alphabets='Latin,ULOG')
  run('omniglot', make_omniglot_pngs(tmp_path / 'zip', zipped=True), tmp_path / 'out_zip')
  spec_dir = run('omniglot', make_omniglot_pngs(tmp_path / 'dir', zipped=False), tmp_path / 'out_dir')
  assert spec_npz['input_format'] == 'npz' and spec_dir['input_format'] == 'png'
  assert record_files(tmp_path / 'out_npz') == record_files(tmp_path / 'out_zip') == record_files(tmp_path / 'out_dir')
  assert spec_npz['classes'][0]['attrs'] == spec_dir['classes'][0]['attrs']
  # Re-running gives byte-identical records and spec.
  run('omniglot', npz, tmp_path / 'out_again', alphabets='Latin,ULOG')
  assert output_files(tmp_path / 'out_npz') == output_files(tmp_path / 'out_again')

  spec = records.DatasetSpec.load(str(tmp_path / 'out_npz'))
  assert spec.image_shape == (28, 28, 1)
  names = [f'Latin/character{n:02d}' for n in range(1, 27)] + [f'ULOG/character{n:02d}' for n in range(1, 27)]
  assert [c['name'] for c in spec.classes] == names
  assert [c['attrs']['index'] for c in spec.classes] == (list(range(LATIN_INDEX, LATIN_INDEX + 26))
                                                         + list(range(ULOG_INDEX, ULOG_INDEX + 26)))
  assert spec.classes[30]['attrs'] == {'set': 'evaluation', 'alphabet': 'ULOG', 'character': 'character05',
                                       'official_id': 1602, 'index': ULOG_INDEX + 4, 'rotation': 0}
  # MAML split: the first 1200 of the full order train, the rest test.
  assert spec.class_ids('train') == list(range(26)) and spec.class_ids('test') == list(range(26, 52))
  assert spec_npz['splits'] == {'train': {'num_classes': 26, 'num_images': 52},
                                'test': {'num_classes': 26, 'num_images': 52}}
  for class_id, split, official_id in ((0, 'train', 683), (25, 'train', 708), (51, 'test', 1623)):
    images = records.load_class(spec, split, class_id)
    assert images.shape == (DRAWERS, 28, 28, 1)
    for d in range(DRAWERS):  # Drawer order; strokes 255 on a 0 background.
      np.testing.assert_array_equal(images[d, ..., 0], expected_omniglot(official_id, d))
    assert images[0, 4, 4, 0] == 255 and images[0, 27, 27, 0] == 0
    assert 0.02 < np.mean((images > 0) & (images < 255)) < 0.5  # Antialiased (and ringing) edges are grey.


@pytest.mark.beam
def test_omniglot_rotations_are_extra_classes(tmp_path):
  npz = make_omniglot_npz(tmp_path / 'npz')
  run('omniglot', npz, tmp_path / 'out', alphabets='Latin', rotations='true')
  spec = records.DatasetSpec.load(str(tmp_path / 'out'))
  assert len(spec.classes) == 4 * 26
  for k in range(4):
    for i in (0, 7):
      c = spec.classes[k * 26 + i]
      assert c['split'] == 'train' and c['attrs']['rotation'] == 90 * k and c['attrs']['base_class'] == i
      assert c['name'] == f'Latin/character{i + 1:02d}' + (f'/rot{90 * k:03d}' if k else '')
      base = records.load_class(spec, 'train', i)
      rotated = records.load_class(spec, 'train', k * 26 + i)
      np.testing.assert_array_equal(rotated[..., 0], np.rot90(base[..., 0], k, axes=(1, 2)))  # Counter-clockwise.
  # 90 degrees counter-clockwise moves the top-left ink block to the bottom-left.
  rot90 = records.load_class(spec, 'train', 26)[0, ..., 0]
  assert rot90[23, 4] == 255 and rot90[4, 4] == 0


@pytest.mark.beam
def test_omniglot_osaka_split_and_pixels(tmp_path):
  npz = make_omniglot_npz(tmp_path / 'npz')
  full = omniglot.plan(str(npz), split='osaka')
  assert [sum(c.split == s for c in full.classes) for s in ('pretrain', 'val', 'unseen')] == [900, 100, 623]
  assert [c.attrs['osaka_index'] for c in full.classes] == list(range(1623))
  spec_json = run('omniglot', npz, tmp_path / 'out', alphabets='Latin,ULOG', split='osaka')
  spec = records.DatasetSpec.load(str(tmp_path / 'out'))
  assert spec.class_ids('pretrain') == list(range(26)) and spec.class_ids('unseen') == list(range(26, 52))
  assert spec.classes[0]['attrs']['osaka_index'] == LATIN_INDEX
  assert 'background 255, strokes 0' in spec_json['pixel_convention']
  images = records.load_class(spec, 'pretrain', 3)  # Not inverted: what OSAKA feeds (png / 255).
  np.testing.assert_array_equal(images[1, ..., 0], expected_omniglot(686, 1, invert=False))
  assert images[0, 4, 4, 0] == 0 and images[0, 27, 27, 0] == 255


def test_omniglot_plan_rules_and_errors(tmp_path):
  npz = make_omniglot_npz(tmp_path / 'npz')
  maml = omniglot.plan(str(npz), num_val='100')
  assert [sum(c.split == s for c in maml.classes) for s in ('train', 'val', 'test')] == [1100, 100, 423]
  assert maml.classes[1199].name == 'Gurmukhi/character41' and maml.classes[1200].split == 'test'
  assert maml.options['invert'] is True and omniglot.plan(str(npz), split='osaka').options['invert'] is False
  assert omniglot.plan(str(npz), invert='false').options['invert'] is False
  with pytest.raises(ValueError, match='MAML convention'):
    omniglot.plan(str(npz), split='osaka', rotations=True)
  with pytest.raises(ValueError, match='Klingon'):
    omniglot.plan(str(npz), alphabets='Latin,Klingon')
  with pytest.raises(FileNotFoundError, match=r'images_background\.zip.*brendenlake/omniglot'):
    omniglot.plan(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='images_background'):
    omniglot.plan(str(npz), format='png')
  odd = tmp_path / 'odd'
  write(str(odd / 'images_background' / 'Klingon' / 'character01' / '0001_01.png'), encode(np.zeros((105, 105),
                                                                                                    np.uint8)))
  with pytest.raises(ValueError, match='Klingon/character01 is not a character of the official background set'):
    omniglot.plan(str(odd))


# ---------------------------------------------------------------- CIFAR-10

CIFAR_COUNTS = {'data_batch_1': 7, 'data_batch_2': 3, 'data_batch_3': 1, 'data_batch_4': 2, 'data_batch_5': 4,
                'test_batch': 5}


def cifar_image(batch_number, i, label):
  """uint8 [32, 32, 3]: R tells the label, G the image, B varies along x (checks the plane/row unpacking)."""
  image = np.zeros((32, 32, 3), np.uint8)
  image[..., 0] = 20 * label + 5
  image[..., 1] = 10 * batch_number + i
  image[..., 2] = np.arange(32, dtype=np.uint8)[None, :] * 8
  image[31, 0, 2] = 255  # One odd pixel in the bottom-left corner: rows are not flipped.
  return image


def make_cifar_batches(folder):
  """The official python batches, pickled with bytes keys as the Python 2 originals load."""
  os.makedirs(folder)
  expected = {}
  for b, (batch, n) in enumerate(CIFAR_COUNTS.items()):
    labels = [(3 * i + b) % 10 for i in range(n)]
    images = np.stack([cifar_image(b, i, label) for i, label in enumerate(labels)])
    rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    with open(os.path.join(folder, batch), 'wb') as f:
      pickle.dump({b'batch_label': batch.encode(), b'labels': labels, b'data': rows,
                   b'filenames': [f'f{i}.png'.encode() for i in range(n)]}, f, protocol=2)
    expected[batch] = (images, labels)
  with open(os.path.join(folder, 'batches.meta'), 'wb') as f:
    pickle.dump({b'label_names': [c.encode() for c in cifar10.CLASSES], b'num_vis': 3072,
                 b'num_cases_per_batch': 10000}, f, protocol=2)
  return expected


@pytest.mark.beam
def test_cifar_python_batches_folder_and_tar(tmp_path):
  expected = make_cifar_batches(str(tmp_path / 'raw' / 'cifar-10-batches-py'))
  spec_json = run('cifar10', tmp_path / 'raw', tmp_path / 'out')
  os.makedirs(tmp_path / 'tar')
  with tarfile.open(tmp_path / 'tar' / 'cifar-10-python.tar.gz', 'w:gz') as tar:
    tar.add(tmp_path / 'raw' / 'cifar-10-batches-py', arcname='cifar-10-batches-py')
  spec_tar = run('cifar10', tmp_path / 'tar', tmp_path / 'out_tar')
  assert spec_json['input_format'] == 'batches' and spec_tar['input_format'] == 'tar'
  assert record_files(tmp_path / 'out') == record_files(tmp_path / 'out_tar')

  spec = records.DatasetSpec.load(str(tmp_path / 'out'))
  assert spec.image_shape == (32, 32, 3)
  assert [c['name'] for c in spec.classes] == list(cifar10.CLASSES) and all(c['split'] is None for c in spec.classes)
  assert spec_json['splits'] == {'train': {'num_classes': 10, 'num_images': 17},
                                 'test': {'num_classes': 5, 'num_images': 5}}
  for split, batches in (('train', [f'data_batch_{i}' for i in range(1, 6)]), ('test', ['test_batch'])):
    images, labels = records.load_split(spec, split)
    want = [(label, img) for b in batches for img, label in zip(*expected[b])]
    assert sorted(labels.tolist()) == sorted(label for label, _ in want)
    for label, img in want:  # Lossless: every image comes back exactly, under its label.
      assert any(np.array_equal(img, got) for got in images[labels == label])
  # Records of a class are in source-id order: batch, then index.
  first = records.load_class(spec, 'train', 0)
  np.testing.assert_array_equal(first[0], expected['data_batch_1'][0][0])


def test_cifar_loader_refuses_foreign_pickles():
  class Evil:
    def __reduce__(self):
      return (os.system, ('true',))
  with pytest.raises(ValueError, match='not allowed'):
    cifar10.load_batch(pickle.dumps({'data': Evil()}, protocol=2), 'data_batch_1')


CIFAR_FILES = {('train', 'cat'): 3, ('train', 'ship'): 2, ('test', 'cat'): 1, ('test', 'truck'): 2}


def make_cifar_folders(root):
  """train/<class>/*.png + test/<class>/*.png, one JPEG among them, one corrupt file; pixel values tell the file."""
  for (split, name), n in CIFAR_FILES.items():
    for i in range(n):
      image = np.full((32, 32, 3), (cifar10.CLASSES.index(name) * 20, i * 40, 100 if split == 'train' else 200),
                      np.uint8)
      write(os.path.join(root, split, name, f'{i:04d}.png'), encode(image))
  write(os.path.join(root, 'train', 'ship', '0009.jpg'), encode(np.full((32, 32, 3), 90, np.uint8), 'JPEG'))
  write(os.path.join(root, 'test', 'truck', '0007.png'), b'\x89PNG\r\n\x1a\n truncated')
  write(os.path.join(root, 'train', 'cat', 'notes.txt'), b'not an image')


@pytest.mark.beam
def test_cifar_image_folders_zipped_and_extracted(tmp_path):
  make_cifar_folders(str(tmp_path / 'dir'))
  os.makedirs(tmp_path / 'zips')
  for split in ('train', 'test'):
    zip_tree(str(tmp_path / 'dir' / split), str(tmp_path / 'zips' / f'cifar10_jpeg_{split}.zip'), prefix=f'{split}/')
  spec_json = run('cifar10', tmp_path / 'dir', tmp_path / 'out')
  run('cifar10', tmp_path / 'zips', tmp_path / 'out_zip')
  assert record_files(tmp_path / 'out') == record_files(tmp_path / 'out_zip')
  spec = records.DatasetSpec.load(str(tmp_path / 'out'))
  cat, ship, truck = (cifar10.CLASSES.index(n) for n in ('cat', 'ship', 'truck'))
  assert spec.classes[cat]['counts'] == {'train': 3, 'test': 1}
  assert spec.classes[ship]['counts'] == {'train': 3} and spec.classes[truck]['counts'] == {'test': 2}
  # The corrupt file is reported, not dropped silently; the text file is not an image at all.
  assert [(b['source_id'], b['class']) for b in spec.bad_images] == [('test/truck/0007.png', 'truck')]
  assert 'train/airplane' in spec_json['missing']['classes'] and spec_json['missing']['splits'] == []
  cats = records.load_class(spec, 'train', cat)
  np.testing.assert_array_equal(cats[:, 0, 0], [[60, 0, 100], [60, 40, 100], [60, 80, 100]])
  ships = records.load_class(spec, 'train', ship)
  assert np.abs(ships[2].astype(int) - 90).max() <= 2  # The JPEG, last in file-name order.


def test_cifar_wrong_size_is_an_error_naming_file_and_class(tmp_path):
  write(str(tmp_path / 'raw' / 'train' / 'dog' / 'big.png'), encode(np.zeros((33, 32, 3), np.uint8)))
  with pytest.raises(Exception, match=r'train/dog/big\.png \(class .dog.\) is 33x32, expected 32x32'):
    run('cifar10', tmp_path / 'raw', tmp_path / 'out')


def test_cifar_missing_inputs_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'cifar-10-python\.tar\.gz'):
    cifar10.plan(str(tmp_path))
  make_cifar_batches(str(tmp_path / 'raw' / 'cifar-10-batches-py'))
  os.remove(tmp_path / 'raw' / 'cifar-10-batches-py' / 'data_batch_3')
  with pytest.raises(FileNotFoundError, match='not data_batch_3'):
    cifar10.plan(str(tmp_path / 'raw'))
  write(str(tmp_path / 'odd' / 'train' / 'kangaroo' / 'x.png'), encode(np.zeros((32, 32, 3), np.uint8)))
  with pytest.raises(ValueError, match='kangaroo'):
    cifar10.plan(str(tmp_path / 'odd'))


# ---------------------------------------------------------------- miniImageNet

MINI = [('n01000001', 'train', 4), ('n01000002', 'train', 3), ('n01000003', 'train', 2), ('n01000004', 'val', 3),
        ('n01000005', 'test', 2), ('n01000006', 'test', 2)]
MINI_ABSENT = {'n0100000100000003.jpg', 'n0100000400000000.jpg', 'n0100000400000001.jpg', 'n0100000400000002.jpg'}


def mini_colour(k):
  return (40 + 30 * k, 200 - 25 * k, 60 + 20 * k)


def make_mini(root, layout):
  """Split CSVs in `root`, images (all but MINI_ABSENT) as a flat zip or a grouped folder tree; extras: a corrupt
  image and one that no CSV lists."""
  rows = {s: [] for s in ('train', 'val', 'test')}
  for k, (wnid, split, n) in enumerate(MINI):
    for i in range(n):
      name = f'{wnid}{i:08d}.jpg'
      rows[split].append((name, wnid))
      if name in MINI_ABSENT:
        continue
      data = encode(np.full((90 + 7 * i, 110, 3), mini_colour(k), np.uint8), 'JPEG')  # Not 84x84: resized.
      if (k, i) == (1, 2):
        data = data[:40]  # Truncated JPEG.
      where = f'images/{name}' if layout == 'flat' else f'{split}/{wnid}/{name}'
      write(os.path.join(root, 'tree', where), data)
  write(os.path.join(root, 'tree', 'images' if layout == 'flat' else 'train/n01000001', 'n0199999900000000.jpg'),
        encode(np.zeros((84, 84, 3), np.uint8), 'JPEG'))
  for split, entries in rows.items():
    out = io.StringIO()
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(['filename', 'label'])
    writer.writerows(entries)
    write(os.path.join(root, f'{split}.csv'), out.getvalue().encode())
  if layout == 'flat':
    zip_tree(os.path.join(root, 'tree'), os.path.join(root, 'mini.zip'), prefix='mini-imagenet/')
    shutil.rmtree(os.path.join(root, 'tree'))
  else:
    for name in os.listdir(os.path.join(root, 'tree')):
      os.rename(os.path.join(root, 'tree', name), os.path.join(root, name))
  return root


@pytest.mark.beam
def test_miniimagenet_flat_zip_and_grouped_tree(tmp_path):
  spec_json = run('miniimagenet', make_mini(str(tmp_path / 'flat'), 'flat'), tmp_path / 'out_flat')
  spec_grouped = run('miniimagenet', make_mini(str(tmp_path / 'grouped'), 'grouped'), tmp_path / 'out_grouped')
  assert record_files(tmp_path / 'out_flat') == record_files(tmp_path / 'out_grouped')
  assert spec_json['input_layout'] == {'layouts': ['flat'], 'zipped': True}
  assert spec_grouped['input_layout'] == {'layouts': ['grouped'], 'zipped': False}

  spec = records.DatasetSpec.load(str(tmp_path / 'out_flat'))
  assert spec.image_shape == (84, 84, 3)
  assert [(c['name'], c['split']) for c in spec.classes] == [(w, s) for w, s, _ in MINI]
  assert [c['attrs'] for c in spec.classes] == [{'listed': 4, 'missing': 1}, {'listed': 3, 'missing': 0},
                                                {'listed': 2, 'missing': 0}, {'listed': 3, 'missing': 3},
                                                {'listed': 2, 'missing': 0}, {'listed': 2, 'missing': 0}]
  assert spec_json['missing_images']['count'] == 4
  assert spec_json['missing_images']['per_split'] == {'train': 1, 'val': 3, 'test': 0}
  assert spec_json['missing_classes'] == ['n01000004'] and spec_json['unlisted_images'] == 1
  assert [b['source_id'] for b in spec.bad_images] == ['n0100000200000002.jpg']
  assert spec_json['splits'] == {'train': {'num_classes': 3, 'num_images': 3 + 2 + 2},
                                 'val': {'num_classes': 0, 'num_images': 0},
                                 'test': {'num_classes': 2, 'num_images': 4}}
  assert spec.class_ids('train') == [0, 1, 2] and spec.class_ids('test') == [4, 5]
  for k, (_, split, _) in enumerate(MINI):
    if spec.classes[k]['counts']:
      images = records.load_class(spec, split, k)
      assert images.shape[1:] == (84, 84, 3)
      assert np.abs(images.astype(int) - mini_colour(k)).max() <= 4


def test_miniimagenet_missing_split_file_and_wrong_folder(tmp_path):
  root = make_mini(str(tmp_path / 'raw'), 'grouped')
  os.rename(os.path.join(root, 'val.csv'), os.path.join(root, 'val.csv.bak'))
  with pytest.raises(FileNotFoundError, match=r'split file val\.csv not found.*meta-learning-lstm'):
    miniimagenet.plan(root)
  os.rename(os.path.join(root, 'val.csv.bak'), os.path.join(root, 'val.csv'))
  os.rename(os.path.join(root, 'test', 'n01000005', 'n0100000500000000.jpg'),
            os.path.join(root, 'test', 'n01000006', 'n0100000500000000.jpg'))
  with pytest.raises(ValueError, match='folder of n01000006, but test.csv labels it n01000005'):
    miniimagenet.plan(root)


# ---------------------------------------------------------------- real data (WTL_DATA_DIR)


def test_real_omniglot_plans(data_root):
  raw = os.path.join(data_root, 'omniglot')
  maml = omniglot.plan(raw)
  assert len(maml.classes) == 1623 and maml.extra['characters_found'] == {'background': 964, 'evaluation': 659}
  assert [sum(c.split == s for c in maml.classes) for s in ('train', 'test')] == [1200, 423]
  assert len({c.attrs['alphabet'] for c in maml.classes}) == 50
  items = omniglot.work_items(maml)
  assert sorted(len(e[3]) for item in items for e in item[2]) == [20] * 1623
  assert len(omniglot.plan(raw, rotations=True).classes) == 4 * 1623
  osaka = omniglot.plan(raw, split='osaka')
  assert [sum(c.split == s for c in osaka.classes) for s in ('pretrain', 'val', 'unseen')] == [900, 100, 623]
  # The official small zips (8 background alphabets) name the same characters with the same official ids as the
  # id ranges the npz form is read with.
  small = omniglot.plan(raw, format='png')
  assert len(small.classes) == 242 and small.extra['duplicate_characters_skipped'] == 50
  by_name = {c.name: c for c in maml.classes}
  assert all(by_name[c.name].attrs == c.attrs for c in small.classes)


@pytest.mark.beam
def test_real_omniglot_zips_match_npz(data_root, tmp_path):
  raw = os.path.join(data_root, 'omniglot')
  options = {'alphabets': 'Greek,Tagalog'}  # Greek is in both small zips.
  spec_png = run('omniglot', raw, tmp_path / 'png', format='png', **options)
  spec_npz = run('omniglot', raw, tmp_path / 'npz', format='npz', **options)
  assert spec_png['splits']['train'] == {'num_classes': 41, 'num_images': 820}
  assert record_files(tmp_path / 'png') == record_files(tmp_path / 'npz')
  assert spec_png['classes'] == [{**c, 'content_sha256': c2['content_sha256']}
                                 for c, c2 in zip(spec_npz['classes'], spec_png['classes'])]
  spec = records.DatasetSpec.load(str(tmp_path / 'npz'))
  images, _ = records.load_split(spec, 'train')
  assert images.shape == (820, 28, 28, 1)
  assert 0.05 < np.mean(images > 127) < 0.3  # Strokes (255) on a black background.
  assert np.median(images) == 0


@pytest.mark.slow
@pytest.mark.beam
def test_real_omniglot_full(data_root, tmp_path):
  spec_json = run('omniglot', os.path.join(data_root, 'omniglot'), tmp_path / 'out')
  assert spec_json['splits'] == {'train': {'num_classes': 1200, 'num_images': 24000},
                                 'test': {'num_classes': 423, 'num_images': 8460}}
  spec = records.DatasetSpec.load(str(tmp_path / 'out'))
  assert all(c['counts'] == {c['split']: 20} for c in spec.classes) and not spec.bad_images
  assert records.load_class(spec, 'test', 1622).shape == (20, 28, 28, 1)


@pytest.mark.beam
@pytest.mark.slow  # Converts all 60,000 CIFAR-10 images (no paper setting reads CIFAR-10).
def test_real_cifar(data_root, tmp_path):
  spec_json = run('cifar10', os.path.join(data_root, 'cifar10'), tmp_path / 'out')
  assert spec_json['input_format'] == 'zips' and not spec_json['bad_images']
  assert spec_json['splits'] == {'train': {'num_classes': 10, 'num_images': 50000},
                                 'test': {'num_classes': 10, 'num_images': 10000}}
  spec = records.DatasetSpec.load(str(tmp_path / 'out'))
  assert all(c['counts'] == {'train': 5000, 'test': 1000} for c in spec.classes)
  images, labels = records.load_split(spec, 'test')
  assert images.shape == (10000, 32, 32, 3) and np.bincount(labels).tolist() == [1000] * 10
  # The official test-set channel means are about (0.494, 0.485, 0.450); JPEG keeps them.
  np.testing.assert_allclose(images.mean(axis=(0, 1, 2)) / 255, [0.494, 0.485, 0.450], atol=0.005)


@pytest.mark.beam
@pytest.mark.slow  # ~40 s; the Omniglot and CIFAR real-data conversions run by default.
def test_real_miniimagenet_sample(data_root, tmp_path):
  spec_json = run('miniimagenet', os.path.join(data_root, 'miniimagenet'), tmp_path / 'out')
  spec = records.DatasetSpec.load(str(tmp_path / 'out'))
  assert {s: spec_json['splits'][s]['num_classes'] for s in ('train', 'val', 'test')} == {
      'train': 64, 'val': 16, 'test': 20}
  assert all(c['counts'] == {c['split']: 100} and c['attrs'] == {'listed': 600, 'missing': 500}
             for c in spec.classes)
  assert spec_json['missing_images']['count'] == 50000 and not spec_json['bad_images']
  assert spec_json['split_files']['train'] == {'classes': 64, 'images': 38400}
  images = records.load_class(spec, 'test', spec.class_ids('test')[0])
  assert images.shape == (100, 84, 84, 3) and 60 < images.mean() < 190

"""tieredImageNet, CUB-200-2011 and Stanford Cars pipelines: generated raw trees through the DirectRunner and back.

Fixtures are written in the official layouts (ILSVRC class folders plus Ren et al.'s split CSVs, the CUB image
tree and tgz, cars_train plus devkit .mat files written with scipy). Real-data tests use the Cars sample and the
sparse-MAML split lists.
"""
import csv
import io
import json
import os
import tarfile
import zipfile

import numpy as np
from PIL import Image
import pytest
from scipy import io as sio

from pipelines import main
from pipelines.datasets import cars
from pipelines.datasets import cub
from pipelines.datasets import tieredimagenet
from wtl_tf.data import records

BEAM_ARGS = ['--direct_running_mode=in_memory', '--direct_num_workers=1']
SPLITS = ('train', 'val', 'test')


def run(dataset, input_dir, output_dir, **options):
  return main.run(dataset, str(input_dir), str(output_dir), beam_args=BEAM_ARGS, options=options, quiet=True)


def encode(array, fmt='JPEG'):
  out = io.BytesIO()
  Image.fromarray(np.asarray(array, np.uint8)).save(out, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
  return out.getvalue()


def solid(colour, width, height):
  return np.broadcast_to(np.array(colour, np.uint8), (height, width, 3))


def write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def colour_of(class_number):
  """A distinct, JPEG-friendly colour per class."""
  return (30 + 37 * class_number % 200, 220 - 23 * class_number % 180, 60 + 51 * class_number % 170)


# ---------------------------------------------------------------- tieredImageNet

TIERED = [  # (wnid, split, category) in split-list order.
    ('n01000001', 'train', 'n09000001'), ('n01000002', 'train', 'n09000001'), ('n01000003', 'train', 'n09000002'),
    ('n01000004', 'val', 'n09000003'),
    ('n01000005', 'test', 'n09000004'), ('n01000006', 'test', 'n09000004'),
]


def make_tiered(root):
  """ILSVRC layout `<root>/images/train/<wnid>/*.JPEG` and split lists in `<root>/splits` (three formats)."""
  for k, (wnid, _, _) in enumerate(TIERED):
    for j in range(k + 1):
      size = (60 + 13 * j, 45 + 7 * k)  # Not square, not 84: the resize must happen.
      write(os.path.join(root, 'images', 'train', wnid, f'{wnid}_{j:04d}.JPEG'), encode(solid(colour_of(k), *size)))
  write(os.path.join(root, 'images', 'train', TIERED[0][0], 'readme.txt'), b'not an image')
  write(os.path.join(root, 'images', 'train', TIERED[1][0], f'{TIERED[1][0]}_9999.JPEG'), b'\xff\xd8 truncated')
  splits = os.path.join(root, 'splits')
  rows = {s: [(w, c) for w, sp, c in TIERED if sp == s] for s in SPLITS}
  write(os.path.join(splits, 'train.csv'), ''.join(f'{w},{c}\n' for w, c in rows['train']).encode())
  write(os.path.join(splits, 'val.csv'), ('synset,category\n' + ''.join(f'{w},{c}\n' for w, c in rows['val'])).encode())
  write(os.path.join(splits, 'test.txt'), ''.join(f'{w} {c}\n' for w, c in rows['test']).encode())
  write(os.path.join(splits, 'words.txt'), b'n01000001\tfirst thing\nn09000001\tcategory one\n')
  return os.path.join(root, 'images'), splits


@pytest.mark.beam
def test_tiered_fixture_round_trip(tmp_path):
  images, splits = make_tiered(tmp_path / 'raw')
  spec_json = run('tieredimagenet', images, tmp_path / 'out', split_dir=splits)
  spec = records.DatasetSpec.load(str(tmp_path / 'out'))
  assert spec.image_shape == (84, 84, 3)
  assert [(c['name'], c['split'], c['attrs']['category']) for c in spec.classes] == TIERED
  assert spec.classes[0]['attrs']['words'] == 'first thing'
  assert spec.classes[0]['attrs']['category_words'] == 'category one'
  assert {s: spec_json['splits'][s]['num_classes'] for s in SPLITS} == {'train': 3, 'val': 1, 'test': 2}
  for k, (_, split, _) in enumerate(TIERED):
    assert spec.classes[k]['counts'] == {split: k + 1}
    images_k = records.load_class(spec, split, k)  # Also checks every label is k.
    assert images_k.shape == (k + 1, 84, 84, 3)
    assert np.abs(images_k.astype(int) - colour_of(k)).max() <= 4
  # The truncated JPEG is reported, the text file is not an image at all.
  assert [b['source_id'] for b in spec.bad_images] == ['n01000002/n01000002_9999.JPEG']
  assert spec_json['missing_classes'] == {'count': 0, 'wnids': []}
  assert spec_json['split_lists']['categories'] == {'train': 2, 'val': 1, 'test': 1}


def test_tiered_missing_split_list_names_file_and_source(tmp_path):
  images, splits = make_tiered(tmp_path / 'raw')
  os.remove(os.path.join(splits, 'test.txt'))
  with pytest.raises(FileNotFoundError, match=r'test\.csv.*few-shot-ssl-public'):
    tieredimagenet.plan(images, split_dir=splits)
  with pytest.raises(FileNotFoundError, match=r'train\.csv'):
    tieredimagenet.plan(images)  # The split lists are not next to the images.


def test_tiered_missing_synset_folder(tmp_path):
  images, splits = make_tiered(tmp_path / 'raw')
  os.rename(os.path.join(images, 'train', 'n01000004'), os.path.join(tmp_path, 'moved'))
  with pytest.raises(FileNotFoundError, match='n01000004'):
    tieredimagenet.plan(images, split_dir=splits)
  plan = tieredimagenet.plan(images, split_dir=splits, allow_missing=True)
  assert [c.name for c in plan.classes] == [w for w, _, _ in TIERED if w != 'n01000004']
  assert plan.extra['missing_classes'] == {'count': 1, 'wnids': ['n01000004']}


def test_tiered_split_lists_must_be_disjoint(tmp_path):
  images, splits = make_tiered(tmp_path / 'raw')
  with open(os.path.join(splits, 'test.txt'), 'a') as f:
    f.write('n01000001 n09000001\n')
  with pytest.raises(ValueError, match='n01000001 is listed twice'):
    tieredimagenet.plan(images, split_dir=splits)


def test_tiered_split_list_formats():
  assert tieredimagenet.parse_split_list('wnid,category\nn01,c\n', 'x') == [('wnid', 'category'), ('n01', 'c')]
  assert tieredimagenet.parse_split_list('# c\n\nn01234567\nn07654321, n09999999\n', 'x') == [
      ('n01234567', None), ('n07654321', 'n09999999')]
  assert tieredimagenet.parse_split_list('class\nn01234567\n', 'x') == [('n01234567', None)]


# ---------------------------------------------------------------- CUB-200-2011

def cub_image(number, index):
  """Left half the class colour, right half white: a crop of any kind would change the column profile."""
  width, height = 90 + 10 * index, 50 + 5 * number
  image = np.full((height, width, 3), 255, np.uint8)
  image[:, :width // 2] = colour_of(number)
  return image


def make_cub(images_dir, names, per_class=lambda n: 2 + n % 2):
  for name in names:
    number = cub.class_number(name)
    for j in range(per_class(number)):
      write(os.path.join(images_dir, name, f'{name.split(".")[1]}_{j:04d}_{number}.jpg'),
            encode(cub_image(number, j)))


CUB_NAMES = [f'{n:03d}.Bird_{n}' for n in range(1, 9)]


@pytest.mark.beam
def test_cub_fixture_folders_and_tgz_give_the_same_records(tmp_path):
  make_cub(tmp_path / 'raw' / 'CUB_200_2011' / 'images', CUB_NAMES)
  write(tmp_path / 'raw' / 'CUB_200_2011' / 'images' / CUB_NAMES[0] / '.hidden.jpg', b'junk')
  spec_json = run('cub', tmp_path / 'raw', tmp_path / 'out')
  spec = records.DatasetSpec.load(str(tmp_path / 'out'))
  rule = ['train', 'val', 'train', 'test'] * 2
  assert [(c['name'], c['split']) for c in spec.classes] == list(zip(CUB_NAMES, rule))
  assert {s: spec_json['splits'][s]['num_classes'] for s in SPLITS} == {'train': 4, 'val': 2, 'test': 2}
  assert spec_json['missing_classes']['count'] == 192 and spec.bad_images == []
  for k, name in enumerate(CUB_NAMES):
    number = k + 1
    images_k = records.load_class(spec, rule[k], k)
    assert images_k.shape == (2 + number % 2, 84, 84, 3)
    # Full image, squeezed to 84x84: the colour/white edge stays at the middle column.
    assert np.abs(images_k[:, :, :38].astype(int) - colour_of(number)).max() <= 6
    assert images_k[:, :, 46:].min() >= 245

  # The official tgz, read as a stream, gives byte-identical records.
  os.makedirs(tmp_path / 'tgz')
  with tarfile.open(tmp_path / 'tgz' / 'CUB_200_2011.tgz', 'w:gz') as tar:
    tar.add(tmp_path / 'raw' / 'CUB_200_2011', arcname='CUB_200_2011')
  spec_tgz = run('cub', tmp_path / 'tgz', tmp_path / 'out_tgz')
  assert spec_tgz['input_layout'] == 'tgz' and spec_tgz['sources'][0]['path'] == 'CUB_200_2011.tgz'
  assert [c['content_sha256'] for c in spec_tgz['classes']] == [c['content_sha256'] for c in spec.classes]
  for name in sorted(os.listdir(tmp_path / 'out' / 'records')):
    with open(tmp_path / 'out' / 'records' / name, 'rb') as a, open(tmp_path / 'out_tgz' / 'records' / name, 'rb') as b:
      assert a.read() == b.read(), name


def test_cub_layouts_and_class_numbers(tmp_path):
  names = ['001.A', '002.B', '004.D', '011.K']  # 003 missing: the split follows the folder number, not the position.
  make_cub(tmp_path / 'CUB_200_2011' / 'images', names, per_class=lambda n: 1)
  for input_dir in (tmp_path, tmp_path / 'CUB_200_2011', tmp_path / 'CUB_200_2011' / 'images'):
    plan = cub.plan(str(input_dir))
    assert [(c.name, c.split) for c in plan.classes] == [
        ('001.A', 'train'), ('002.B', 'val'), ('004.D', 'test'), ('011.K', 'train')]
  assert plan.extra['missing_classes']['numbers'][:3] == [3, 5, 6]
  with pytest.raises(FileNotFoundError, match=r'CUB_200_2011\.tgz.*97eceeb196236b17998738112f37df78'):
    cub.plan(str(tmp_path / 'empty'))


def test_cub_split_rule_matches_reference_lists(tmp_path, data_root):
  lists = {s: json.load(open(os.path.join(data_root, 'splits', 'cub', f'{s}.json'))) for s in SPLITS}
  names = sorted((n for s in SPLITS for n in lists[s]), key=cub.class_number)
  assert [cub.class_number(n) for n in names] == list(range(1, 201))
  for name in names:  # One tiny image per class is enough for the plan.
    write(os.path.join(tmp_path, 'images', name, 'x.jpg'), encode(solid((1, 2, 3), 4, 4)))
  plan = cub.plan(str(tmp_path))
  for split in SPLITS:
    assert [c.name for c in plan.classes if c.split == split] == lists[split], split


# ---------------------------------------------------------------- Stanford Cars

def write_devkit(folder, class_names, annotations):
  """cars_meta.mat / cars_train_annos.mat with the devkit's structure (1xK cell, 1xN struct of 1x1 arrays)."""
  os.makedirs(folder, exist_ok=True)
  meta = np.empty((1, len(class_names)), dtype=object)
  for i, name in enumerate(class_names):
    meta[0, i] = np.array([name])
  sio.savemat(os.path.join(folder, 'cars_meta.mat'), {'class_names': meta})
  fields = ['bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2', 'class', 'fname']
  table = np.empty((1, len(annotations)), dtype=[(f, 'O') for f in fields])
  for i, (fname, label, (x1, y1, x2, y2)) in enumerate(annotations):
    table[0, i] = tuple(np.array([[v]], np.uint16) for v in (x1, y1, x2, y2, label)) + (np.array([fname]),)
  sio.savemat(os.path.join(folder, 'cars_train_annos.mat'), {'annotations': table})


def boxed_image(colour, box, size=(70, 50)):
  """Grey image whose PIL box (x1, y1, x2, y2) region has `colour`."""
  x1, y1, x2, y2 = box
  image = np.full((size[1], size[0], 3), 128, np.uint8)
  image[y1:y2, x1:x2] = colour
  return image


CAR_NAMES = ['Car One 2001', 'Car Two 2002', 'Car Three 2003', 'Car Four 2004', 'Car Five 2005']


def make_cars(root):
  """Classes 1, 2 and 4 have images (class 3 and 5 none); 00004.jpg is annotated but absent; 00099.jpg is not
  annotated; 00006.jpg is already cut to its box (left half blue, right half yellow)."""
  annotations = [('00001.jpg', 1, (10, 8, 40, 38)), ('00002.jpg', 2, (5, 5, 60, 30)), ('00003.jpg', 1, (0, 0, 20, 20)),
                 ('00004.jpg', 1, (1, 1, 9, 9)), ('00005.jpg', 4, (30, 20, 69, 49)), ('00006.jpg', 4, (20, 20, 50, 44))]
  write_devkit(os.path.join(root, 'devkit'), CAR_NAMES, annotations)
  for fname, label, box in annotations:
    if fname == '00004.jpg':
      continue
    if fname == '00006.jpg':
      image = np.zeros((24, 30, 3), np.uint8)
      image[:, :15] = (0, 0, 255)
      image[:, 15:] = (255, 255, 0)
    else:
      image = boxed_image(colour_of(label), box)
    # PNG bytes under the .jpg name: exact pixels (PIL reads by content, as for any JPEG).
    write(os.path.join(root, 'cars_train', fname), encode(image, 'PNG'))
  write(os.path.join(root, 'cars_train', '00099.jpg'), encode(solid((0, 0, 0), 8, 8), 'PNG'))


@pytest.mark.beam
def test_cars_fixture_crops_to_boxes_from_folder_and_tgz(tmp_path):
  make_cars(tmp_path / 'raw')
  spec_json = run('cars', tmp_path / 'raw', tmp_path / 'out')
  spec = records.DatasetSpec.load(str(tmp_path / 'out'))
  # Devkit order, present classes only, split by devkit index (class 4 -> index 3 -> test).
  assert [(c['name'], c['split'], c['attrs']['devkit_class_id']) for c in spec.classes] == [
      ('Car One 2001', 'train', 1), ('Car Two 2002', 'val', 2), ('Car Four 2004', 'test', 4)]
  assert [c['counts'] for c in spec.classes] == [{'train': 2}, {'val': 1}, {'test': 2}]
  assert spec_json['missing'] == {
      'classes': 2, 'class_names': ['Car Three 2003', 'Car Five 2005'], 'images': 1,
      'images_of_converted_classes': 1, 'unannotated_files': 1, 'unannotated_examples': ['00099.jpg']}
  assert (spec_json['crop']['cropped'], spec_json['crop']['already_cropped']) == (4, 1)
  one = records.load_class(spec, 'train', 0)
  assert one.shape == (2, 84, 84, 3)
  assert np.all(one == colour_of(1))  # Only the box survives: no grey at all.
  assert np.all(records.load_class(spec, 'val', 1) == colour_of(2))
  four = records.load_class(spec, 'test', 2)  # 00005.jpg, then 00006.jpg (records are in source-id order).
  assert np.all(four[0] == colour_of(4))
  # Whole, not cut again (that would leave only yellow); LANCZOS blends 3 source columns either side of the edge.
  assert np.all(four[1][:, :33] == (0, 0, 255)) and np.all(four[1][:, 51:] == (255, 255, 0))
  assert spec.bad_images == []

  # cars_train.tgz (read as a stream) instead of the folder: the same records.
  os.makedirs(tmp_path / 'tgz')
  os.rename(tmp_path / 'raw' / 'devkit', tmp_path / 'tgz' / 'devkit')
  with tarfile.open(tmp_path / 'tgz' / 'cars_train.tgz', 'w:gz') as tar:
    tar.add(tmp_path / 'raw' / 'cars_train', arcname='cars_train')
  spec_tgz = run('cars', tmp_path / 'tgz', tmp_path / 'out_tgz')
  assert spec_tgz['input_layout'] == 'tar' and spec_tgz['missing'] == spec_json['missing']
  assert [c['content_sha256'] for c in spec_tgz['classes']] == [c['content_sha256'] for c in spec.classes]
  for name in sorted(os.listdir(tmp_path / 'out' / 'records')):
    with open(tmp_path / 'out' / 'records' / name, 'rb') as a, open(tmp_path / 'out_tgz' / 'records' / name, 'rb') as b:
      assert a.read() == b.read(), name


def test_cars_missing_files_name_what_to_download(tmp_path):
  make_cars(tmp_path / 'raw')
  os.remove(tmp_path / 'raw' / 'devkit' / 'cars_train_annos.mat')
  with pytest.raises(FileNotFoundError, match=r'cars_train_annos\.mat.*car_devkit\.tgz'):
    cars.plan(str(tmp_path / 'raw'))
  make_cars(tmp_path / 'raw2')
  os.rename(tmp_path / 'raw2' / 'cars_train', tmp_path / 'elsewhere')
  with pytest.raises(FileNotFoundError, match=r'cars_train\.tgz'):
    cars.plan(str(tmp_path / 'raw2'))
  assert len(cars.plan(str(tmp_path / 'raw2'), images=str(tmp_path / 'elsewhere')).classes) == 3


def test_cars_split_rule_matches_reference_lists(data_root):
  lists = {s: json.load(open(os.path.join(data_root, 'splits', 'cars', f'{s}.json'))) for s in SPLITS}
  names = cars.load_meta(os.path.join(data_root, 'stanford_cars', 'cars_meta.mat'))
  assert len(names) == 196 and sorted(names) == sorted(n for s in SPLITS for n in lists[s])
  for split in SPLITS:
    assert [n for i, n in enumerate(names) if cub.split_of_index(i) == split] == lists[split], split


@pytest.mark.beam
def test_cars_real_sample(tmp_path, data_root):
  raw = os.path.join(data_root, 'stanford_cars')
  spec_json = run('cars', raw, tmp_path / 'out')
  spec = records.DatasetSpec.load(str(tmp_path / 'out'))
  with open(os.path.join(raw, 'class_names.csv')) as f:
    all_names = [row['class_name'] for row in csv.DictReader(f)]
  with open(os.path.join(raw, 'labels_sample.csv')) as f:
    sample = list(csv.DictReader(f))
  lists = {s: json.load(open(os.path.join(data_root, 'splits', 'cars', f'{s}.json'))) for s in SPLITS}
  assert [c['name'] for c in spec.classes] == all_names[:20]
  for c in spec.classes:
    split = next(s for s in SPLITS if c['name'] in lists[s])
    assert c['split'] == split and c['counts'] == {split: 20}
  assert {s: spec_json['splits'][s]['num_images'] for s in SPLITS} == {'train': 200, 'val': 100, 'test': 100}
  assert spec.bad_images == []
  assert spec_json['missing']['classes'] == 176 and spec_json['missing']['images'] == 8144 - 400
  # The sample's JPEGs are already cut to their boxes (size = (x2 - x1, y2 - y1)), so none is cut again.
  assert spec_json['crop']['already_cropped'] == 400
  # Class 1, record by record: the JPEG, whole, resized with LANCZOS.
  images_0 = records.load_class(spec, 'train', 0)
  fnames = sorted(r['fname'] for r in sample if r['class_id'] == '1')
  with zipfile.ZipFile(os.path.join(raw, 'stanford_cars_train_sample_20x20.zip')) as z:
    for image, fname in zip(images_0, fnames):
      raw_image = Image.open(io.BytesIO(z.read(f'cars_train/{fname}'))).convert('RGB')
      row = next(r for r in sample if r['fname'] == fname)
      assert raw_image.size == (int(row['bbox_x2']) - int(row['bbox_x1']), int(row['bbox_y2']) - int(row['bbox_y1']))
      np.testing.assert_array_equal(image, np.asarray(raw_image.resize((84, 84), Image.LANCZOS)))

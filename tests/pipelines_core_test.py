"""Shared Beam stages and the record reader: IDX and class-folder inputs, spec, determinism, bad and missing data."""
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipelines import main as pipelines_main
from pipelines.datasets import mnist
from wtl_tf.data import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ['--direct_running_mode=in_memory', '--direct_num_workers=1']
pytestmark = pytest.mark.beam


def write_idx(path, array, gz=True):
  header = struct.pack('>BBBB', 0, 0, 8, array.ndim) + struct.pack('>' + 'I' * array.ndim, *array.shape)
  data = header + array.astype(np.uint8).tobytes()
  with (gzip.open(path, 'wb') if gz else open(path, 'wb')) as f:
    f.write(data)


@pytest.fixture(scope='module')
def raw_mnist(tmp_path_factory):
  raw = tmp_path_factory.mktemp('mnist_raw')
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n, gz in (('train', 50, True), ('t10k', 20, False)):  # One gzipped, one plain: both are accepted.
    images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
    labels[:10] = np.arange(10)
    suffix = '.gz' if gz else ''
    write_idx(raw / f'{split}-images-idx3-ubyte{suffix}', images, gz)
    write_idx(raw / f'{split}-labels-idx1-ubyte{suffix}', labels, gz)
    arrays[split] = (images, labels)
  return raw, arrays


@pytest.fixture(scope='module')
def mnist_records(raw_mnist, tmp_path_factory):
  out = tmp_path_factory.mktemp('mnist_records')
  # The default runner (multi-process DirectRunner) once; other tests use the in-memory runner for speed.
  pipelines_main.run('mnist', str(raw_mnist[0]), str(out), quiet=True)
  return out


def test_idx_round_trip_counts_and_spec(raw_mnist, mnist_records):
  _, arrays = raw_mnist
  spec = records.DatasetSpec.load(str(mnist_records))
  for split, key in (('train', 'train'), ('test', 't10k')):
    images, labels = arrays[key]
    got_x, got_y = records.load_split(spec, split)
    assert got_x.shape == (len(images), 28, 28, 1)
    for c in range(10):  # Class by class, in the original image order.
      np.testing.assert_array_equal(got_x[got_y == c][..., 0], images[labels == c])
      assert spec.count(split, c) == int(np.sum(labels == c))
  raw = spec.raw
  assert raw['image_shape'] == [28, 28, 1] and raw['encoding'] == 'png' and raw['pipeline_version']
  assert raw['splits']['train'] == {'num_classes': 10, 'num_images': 50}
  sources = {s['path']: s['sha256'] for s in raw['sources']}
  path = raw_mnist[0] / 'train-images-idx3-ubyte.gz'
  assert sources['train-images-idx3-ubyte.gz'] == hashlib.sha256(path.read_bytes()).hexdigest()
  assert not [f for f in os.listdir(mnist_records / 'records') if f.startswith('.')]


def test_rerun_is_byte_identical(raw_mnist, mnist_records, tmp_path):
  pipelines_main.run('mnist', str(raw_mnist[0]), str(tmp_path), beam_args=FAST, quiet=True)
  for name in os.listdir(mnist_records / 'records'):
    assert (tmp_path / 'records' / name).read_bytes() == (mnist_records / 'records' / name).read_bytes()
  assert (tmp_path / 'dataset_spec.json').read_bytes() == (mnist_records / 'dataset_spec.json').read_bytes()


def test_truncated_or_missing_records_are_clear_errors(mnist_records, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  copy = tmp_path / 'copy'
  shutil.copytree(mnist_records, copy)
  spec = records.DatasetSpec.load(str(copy))
  victim = spec.files('train', 3)[0]
  data = open(victim, 'rb').read()
  open(victim, 'wb').write(data[:-7])
  with pytest.raises(records.DataError, match='corrupt or truncated'):
    records.load_split(spec, 'train')
  os.remove(victim)
  with pytest.raises(records.DataError, match='missing'):
    records.load_class(spec, 'train', 3)
  with pytest.raises(records.DataError, match='pipelines.main'):
    records.DatasetSpec.load(str(tmp_path / 'nothing'))


def test_bad_idx_files_name_the_file(tmp_path):
  write_idx(tmp_path / 'x', np.zeros((5, 28, 28)), gz=False)
  (tmp_path / 'y').write_bytes((tmp_path / 'x').read_bytes()[:-10])
  with pytest.raises(ValueError, match='truncated'):
    mnist.read_idx(str(tmp_path / 'y'))
  with pytest.raises(FileNotFoundError, match='train-images-idx3-ubyte'):
    mnist.plan(str(tmp_path))


def _tree(root, bad=True):
  rng = np.random.default_rng(0)
  for split, name, n in (('train', 'cat', 3), ('train', 'dog', 2), ('test', 'emu', 2)):
    os.makedirs(root / split / name, exist_ok=True)
    for i in range(n):
      Image.fromarray(np.full((30, 40, 3), 40 * i + (0 if name == 'cat' else 100), np.uint8)).save(
          root / split / name / f'{i}.png')
  if bad:
    (root / 'train' / 'dog' / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')


def test_folder_resize_counts_and_bad_images(tmp_path):
  _tree(tmp_path / 'raw')
  spec_dict = pipelines_main.run('folder', str(tmp_path / 'raw'), str(tmp_path / 'out'), beam_args=FAST,
                                 options={'image_size': '16'}, quiet=True)
  assert [b['source_id'] for b in spec_dict['bad_images']] == ['train/dog/broken.jpg']
  spec = records.DatasetSpec.load(str(tmp_path / 'out'))
  names = {c['name']: c for c in spec.classes}
  assert names['cat']['counts'] == {'train': 3} and names['dog']['counts'] == {'train': 2}
  cat = records.load_class(spec, 'train', names['cat']['id'])
  assert cat.shape == (3, 16, 16, 3)
  np.testing.assert_array_equal(cat[:, :, :, 0].reshape(3, -1).mean(1), [0, 40, 80])  # Flat colours survive resizing.


def test_cli_reports_bad_images_and_missing_input(tmp_path):
  _tree(tmp_path / 'raw')
  run = lambda *a: subprocess.run([sys.executable, '-m', 'pipelines.main', *a], capture_output=True, text=True,
                                  cwd=ROOT, timeout=300)
  ok = run('--dataset=folder', f'--input_dir={tmp_path / "raw"}', f'--output_dir={tmp_path / "out"}',
           '--option=image_size=16', *FAST)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert '1 bad' in ok.stdout and 'train/dog/broken.jpg' in ok.stdout
  missing = run('--dataset=mnist', f'--input_dir={tmp_path / "nope"}', f'--output_dir={tmp_path / "o2"}', *FAST)
  assert missing.returncode == 2 and 'train-images-idx3-ubyte' in missing.stderr
  assert 'Traceback' not in missing.stderr
  unknown = run('--dataset=imagenet21k', f'--output_dir={tmp_path / "o3"}')
  assert unknown.returncode == 2 and 'unknown dataset' in unknown.stderr


def test_real_mnist_counts(data_root, tmp_path):
  images, labels = mnist.load_split(os.path.join(data_root, 'mnist'), 'train', 'mnist')
  test_images, _ = mnist.load_split(os.path.join(data_root, 'mnist'), 'test', 'mnist')
  assert images.shape == (60000, 28, 28) and test_images.shape == (10000, 28, 28)
  assert list(labels[:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # SOURCE.md's first labels.
  assert abs(images.mean() - 33.3184) < 1e-3

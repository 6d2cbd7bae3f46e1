"""MNIST and Fashion-MNIST from the IDX files (gzipped or not).

Classes are the 10 digits / garment types; both official splits keep their images ('train' 60k, 'test' 10k).
Fashion-MNIST is picked up from Debian's `dataset-fashion-mnist` package when --input_dir is not given.
"""
import gzip
import os
import struct

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
import numpy as np

from pipelines import core

FASHION_DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_NAMES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                 'Ankle boot']
FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
         'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
EXPECTED = {'train': 60000, 'test': 10000}
# For users who are online; never used by the pipeline or tests. MD5s of the .gz files as published.
DOWNLOADS = {
    'mnist': {
        'url': 'https://ossci-datasets.s3.amazonaws.com/mnist/ (mirror of http://yann.lecun.com/exdb/mnist/)',
        'md5': {'train-images-idx3-ubyte.gz': 'f68b3c2dcbeaaa9fbdd348bbdeb94873',
                'train-labels-idx1-ubyte.gz': 'd53e105ee54ea40749a09fcbcd1e9432',
                't10k-images-idx3-ubyte.gz': '9fb629c4189551a2d022fa330f9573f3',
                't10k-labels-idx1-ubyte.gz': 'ec29112dd5afa0611ce80d1b7f02629c'}},
    'fashion_mnist': {
        'url': 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ '
               '(or: apt-get install dataset-fashion-mnist)',
        'md5': {'train-images-idx3-ubyte.gz': '8d4fb7e6c68d591d4c3dfef9ec88bf0d',
                'train-labels-idx1-ubyte.gz': '25c81989df183df01b3e8a0aad5dffbe',
                't10k-images-idx3-ubyte.gz': 'bef4ecab320f06d8554ea6380940ec79',
                't10k-labels-idx1-ubyte.gz': 'bb300cfdad3c16e7a12a480ee83cd310'}},
}
CHUNK = 5000


def find_file(input_dir, stem, dataset):
  for name in (stem + '.gz', stem, stem.replace('-idx', '.idx')):
    path = os.path.join(input_dir, name)
    if FileSystems.exists(path):
      return path
  info = DOWNLOADS[dataset]
  raise FileNotFoundError(
      f'{dataset}: {stem}[.gz] not found in {input_dir}. Download the four IDX files from {info["url"]} '
      f'({", ".join(info["md5"])}) and put them in that directory.')


def read_idx(path):
  """Reads an IDX file (optionally gzipped) into a numpy array, checking its header."""
  with FileSystems.open(path, compression_type='uncompressed') as f:
    data = f.read()
  if data[:2] == b'\x1f\x8b':
    with core.reading(path):
      data = gzip.decompress(data)
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
    raise ValueError(f'{path}: not an unsigned-byte IDX file (bad magic {data[:4]!r})')
  ndim = data[3]
  dims = struct.unpack('>' + 'I' * ndim, data[4:4 + 4 * ndim])
  body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(dims)):
    raise ValueError(f'{path}: header says {dims} ({int(np.prod(dims))} bytes) but holds {body.size}: truncated?')
  return body.reshape(dims)


def load_split(input_dir, split, dataset):
  images_path, labels_path = (find_file(input_dir, stem, dataset) for stem in FILES[split])
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
    raise ValueError(f'{images_path}: expected [N,28,28] images with N labels, got {images.shape} and '
                     f'{labels.shape}')
  return images, labels


def default_input_dir(dataset):
  if dataset == 'fashion_mnist' and os.path.isdir(FASHION_DEBIAN_DIR):
    return FASHION_DEBIAN_DIR
  raise ValueError(f'--input_dir is required for {dataset}' + (
      f' (or install Debian\'s dataset-fashion-mnist, which fills {FASHION_DEBIAN_DIR})'
      if dataset == 'fashion_mnist' else ''))


def plan(input_dir, dataset='mnist'):
  input_dir = input_dir or default_input_dir(dataset)
  sources = []
  for split in FILES:
    for stem in FILES[split]:
      sources.append(find_file(input_dir, stem, dataset))
  names = FASHION_NAMES if dataset == 'fashion_mnist' else [str(d) for d in range(10)]
  return core.Plan(dataset=dataset, input_dir=input_dir, classes=[core.ClassInfo(n, None) for n in names],
                   image_shape=(28, 28, 1), sources=sources, resize=False, splits=('train', 'test'),
                   extra={'download': DOWNLOADS[dataset]})


def _read_chunk(item, input_dir, dataset):
  split, start = item
  images, labels = load_split(input_dir, split, dataset)
  for i in range(start, min(start + CHUNK, len(images))):
    yield core.RawImage(class_id=int(labels[i]), split=split, source_id=f'{split}/{i:05d}', data=images[i])


def read(the_plan):
  counts = {}
  for split in FILES:
    images_path = find_file(the_plan.input_dir, FILES[split][0], the_plan.dataset)
    with FileSystems.open(images_path, compression_type='uncompressed') as f:
      head = f.read(16)
    if head[:2] == b'\x1f\x8b':
      with FileSystems.open(images_path) as f:
        head = f.read(16)
    counts[split] = struct.unpack('>I', head[4:8])[0]
  work = [(split, start) for split in FILES for start in range(0, counts[split], CHUNK)]

  @beam.ptransform_fn
  def _read(pbegin):
    return (pbegin | core.create_from(work, 'Chunks')
            | 'Images' >> beam.FlatMap(_read_chunk, input_dir=the_plan.input_dir, dataset=the_plan.dataset))
  return _read()  # pylint: disable=no-value-for-parameter

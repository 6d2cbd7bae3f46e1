"""Measures the data path on this machine: Beam conversion (images/s) and episode sampling (episodes/s).

  .venv/bin/python tools/benchmark_data.py [--quick] [--classes=20] [--images_per_class=600] [--episodes=300]

1. Writes a synthetic class-folder tree of JPEGs (smooth random colour fields plus noise, so they compress like
   photos rather than like white noise) and converts it with the `folder` pipeline on the default multi-process
   DirectRunner (one worker per core). The rate includes the runner's start-up, as a user sees it.
2. Samples miniImageNet-shaped episodes (5-way 5-shot 15-query, 84x84x3) from those records, in memory mode and in
   streaming mode, and reports episodes/s after a short warm-up, to compare with the rate a meta-training step
   consumes (docs/PERFORMANCE.md).
3. With --real and WTL_DATA_DIR set, also converts and samples the real miniImageNet sample, if its pipeline exists.
"""
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wtl_tf import console  # pylint: disable=g-import-not-at-top,wrong-import-position

console.quiet()  # Before anything imports TensorFlow or Beam.

from absl import app, flags  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

flags.DEFINE_bool('quick', False, 'Short run: 10 classes x 100 images, 50 episodes per mode.')
flags.DEFINE_integer('classes', 20, 'Synthetic classes.')
flags.DEFINE_integer('images_per_class', 600, 'Synthetic images per class (600 as in miniImageNet).')
flags.DEFINE_integer('source_size', 84, 'Side of the synthetic JPEGs (the pipeline resizes to --image_size).')
flags.DEFINE_integer('image_size', 84, 'Side of the stored images.')
flags.DEFINE_integer('ways', 5, 'N.')
flags.DEFINE_integer('shots', 5, 'K.')
flags.DEFINE_integer('queries', 15, 'Q.')
flags.DEFINE_integer('episodes', 300, 'Episodes timed per mode (after a warm-up).')
flags.DEFINE_integer('meta_batch_size', 0, 'If > 0, time meta-batches of this many episodes instead.')
flags.DEFINE_bool('real', False, 'Also convert and sample WTL_DATA_DIR/miniimagenet if its pipeline exists.')
flags.DEFINE_string('workdir', None, 'Keep the generated files here (default: a temp dir, removed afterwards).')
FLAGS = flags.FLAGS


def write_jpeg_tree(root, num_classes, per_class, size, seed=0):
  """<root>/train/cNNN/NNNN.jpg, deterministic; returns the number of bytes written."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  total = 0
  for c in range(num_classes):
    class_dir = os.path.join(root, 'train', f'c{c:03d}')
    os.makedirs(class_dir, exist_ok=True)
    for i in range(per_class):
      coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((size, size),
                                                                                       Image.BICUBIC)
      pixels = np.asarray(coarse, np.int16) + rng.integers(-12, 13, (size, size, 3))
      path = os.path.join(class_dir, f'{i:04d}.jpg')
      Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
      total += os.path.getsize(path)
  return total


def convert(name, input_dir, output_dir, options=None):
  from pipelines import main as pipeline_main  # pylint: disable=g-import-not-at-top
  start = time.time()
  spec = pipeline_main.run(name, input_dir, output_dir, options=options, quiet=True)
  seconds = time.time() - start
  images = sum(s['num_images'] for s in spec['splits'].values())
  return images, seconds


def time_sampler(spec, split, mode, num_episodes, meta_batch_size, **kwargs):
  """(build seconds, episodes/s) for one sampler configuration."""
  from wtl_tf.data import episodes  # pylint: disable=g-import-not-at-top
  start = time.time()
  sampler = episodes.EpisodeSampler(spec, split, FLAGS.ways, FLAGS.shots, FLAGS.queries, mode=mode, **kwargs)
  batch = meta_batch_size or 1
  iterator = iter(sampler.dataset(seed=0, meta_batch_size=meta_batch_size or None))
  for _ in range(max(2, 10 // batch)):  # Warm-up: tracing, thread pools, page cache.
    next(iterator)
  build = time.time() - start
  steps = max(1, num_episodes // batch)
  start = time.time()
  for _ in range(steps):
    element = next(iterator)
  _ = element.query_images.numpy()
  return build, steps * batch / (time.time() - start)


def main(argv):
  del argv
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from wtl_tf.data import records  # pylint: disable=g-import-not-at-top
  if FLAGS.quick:
    FLAGS.classes, FLAGS.images_per_class, FLAGS.episodes = 10, 100, 50
  if FLAGS.images_per_class < FLAGS.shots + FLAGS.queries or FLAGS.classes < FLAGS.ways:
    print('error: need at least --ways classes of --shots + --queries images', file=sys.stderr)
    sys.exit(2)
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix='wtl_benchmark_')
  rows = []
  cores = os.cpu_count()
  try:
    raw, out = os.path.join(workdir, 'raw'), os.path.join(workdir, 'records')
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    start = time.time()
    size_bytes = write_jpeg_tree(raw, FLAGS.classes, FLAGS.images_per_class, FLAGS.source_size)
    print(f'wrote {FLAGS.classes}x{FLAGS.images_per_class} JPEGs ({size_bytes / 2**20:.1f} MiB) in '
          f'{time.time() - start:.1f} s; converting ...', flush=True)
    images, seconds = convert('folder', raw, out, {'image_size': FLAGS.image_size, 'channels': 3})
    rows.append(('Beam folder pipeline, DirectRunner multi_processing x' + str(cores),
                 f'{images / seconds:.0f}', 'images/s', f'{images} images in {seconds:.1f} s incl. start-up'))
    spec = records.DatasetSpec.load(out)
    record_mib = sum(os.path.getsize(os.path.join(out, records.RECORDS_DIR, f))
                     for f in os.listdir(os.path.join(out, records.RECORDS_DIR))) / 2**20
    shape = f'{FLAGS.ways}w{FLAGS.shots}s{FLAGS.queries}q {FLAGS.image_size}px'
    unit = 'episodes/s' + (f' (batches of {FLAGS.meta_batch_size})' if FLAGS.meta_batch_size else '')
    for label, mode, kwargs in (('memory', 'memory', {}), ('memory +normalize +augment', 'memory',
                                                           {'normalize': True, 'augment': True}),
                                ('stream', 'stream', {})):
      print(f'sampling: {label} ...', flush=True)
      build, rate = time_sampler(spec, 'train', mode, FLAGS.episodes, FLAGS.meta_batch_size, **kwargs)
      rows.append((f'episodes {shape}, {label}', f'{rate:.0f}', unit,
                   f'set-up+warm-up {build:.1f} s; {FLAGS.classes} classes x {FLAGS.images_per_class}, '
                   f'records {record_mib:.0f} MiB'))
    if FLAGS.real:
      rows.extend(real_miniimagenet(workdir))
  finally:
    if not FLAGS.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  print(f'\nTF {tf.__version__}, {cores} cores; bar: sampling >= 10 episodes/s (20x a Conv4 step)')
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  for row in rows:
    print('  '.join(cell.rjust(w) if i == 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def real_miniimagenet(workdir):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from wtl_tf.data import records  # pylint: disable=g-import-not-at-top
  root = os.environ.get('WTL_DATA_DIR')
  if not root or not os.path.isdir(os.path.join(root, 'miniimagenet')):
    return [('real miniImageNet', '-', '', 'skipped: WTL_DATA_DIR/miniimagenet not found')]
  if importlib.util.find_spec('pipelines.datasets.miniimagenet') is None:
    return [('real miniImageNet', '-', '', 'skipped: pipelines/datasets/miniimagenet.py does not exist yet')]
  out = os.path.join(workdir, 'miniimagenet')
  try:
    images, seconds = convert('miniimagenet', os.path.join(root, 'miniimagenet'), out)
    spec = records.DatasetSpec.load(out)
    split = max(spec.raw['splits'], key=lambda s: spec.raw['splits'][s]['num_classes'])
    rows = [('Beam miniimagenet pipeline', f'{images / seconds:.0f}', 'images/s',
             f'{images} images in {seconds:.1f} s incl. start-up')]
    for mode in ('memory', 'stream'):
      _, rate = time_sampler(spec, split, mode, FLAGS.episodes, FLAGS.meta_batch_size,
                             normalize=spec.image_shape[-1] == 3)
      rows.append((f'episodes real miniImageNet {split}, {mode}', f'{rate:.0f}', 'episodes/s', ''))
    return rows
  except Exception as e:  # pylint: disable=broad-except  (optional extra; report and go on)
    return [('real miniImageNet', '-', '', f'skipped: {type(e).__name__}: {str(e).splitlines()[0][:100]}')]


if __name__ == '__main__':
  app.run(main)

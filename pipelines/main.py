"""Converts a raw dataset into per-class TFRecords and dataset_spec.json with Apache Beam.

  python -m pipelines.main --dataset=mnist --input_dir=RAW --output_dir=OUT [--runner=DirectRunner] [beam options]

Any flag this module does not define is handed to Beam as a pipeline option, so the same pipeline runs on other
runners unchanged, e.g.
  --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp --output_dir=gs://B/mnist
  --runner=FlinkRunner --flink_master=HOST:8081 --environment_type=DOCKER
  --runner=SparkRunner --spark_master_url=spark://HOST:7077
(input and output may then be gs:// or s3:// paths: all IO goes through Beam's FileSystems).
By default it runs on the DirectRunner in multi-process mode with one worker per core.

The console shows only this module's lines (see wtl_tf/console.py; --verbosity=0 or WTL_DEBUG=1 shows everything).
Every failure the user can fix (missing or corrupt raw files, an unusable output directory, bad --option values) is
one line `error: ...` and exit status 2; anything else is a bug and keeps its traceback.
"""
import contextlib
import errno
import importlib
import os
import re
import shutil
import sys
import time

from absl import app, flags

from wtl_tf import console

# dataset name -> (module in pipelines.datasets, keyword arguments of its plan()).
DATASETS = {
    'mnist': ('mnist', {'dataset': 'mnist'}),
    'fashion_mnist': ('mnist', {'dataset': 'fashion_mnist'}),
    'folder': ('folder', {'dataset': 'folder'}),
    'omniglot': ('omniglot', {}),
    'cifar10': ('cifar10', {}),
    'miniimagenet': ('miniimagenet', {}),
    'tieredimagenet': ('tieredimagenet', {}),
    'cub': ('cub', {}),
    'cars': ('cars', {}),
}

flags.DEFINE_string('dataset', None, f'One of: {", ".join(sorted(DATASETS))}.')
flags.DEFINE_string('input_dir', None, 'Directory (or gs:// path) with the raw files as downloaded.')
flags.DEFINE_string('output_dir', None, 'Where records/ and dataset_spec.json go.')
flags.DEFINE_string('runner', 'DirectRunner', 'Beam runner.')
flags.DEFINE_multi_string('option', [], 'Dataset option key=value (e.g. rotations=true for Omniglot).')
FLAGS = flags.FLAGS


def parse_options(pairs):
  out = {}
  for pair in pairs:
    key, sep, value = pair.partition('=')
    if not sep:
      raise ValueError(f'--option expects key=value, got {pair!r}')
    lowered = value.lower()
    out[key] = True if lowered == 'true' else False if lowered == 'false' else value
  return out


def direct_runner_args(runner, beam_args):
  """Multi-process DirectRunner on all cores unless the user chose otherwise."""
  if runner != 'DirectRunner':
    return []
  args = []
  if not any(a.startswith('--direct_running_mode') for a in beam_args):
    args.append('--direct_running_mode=multi_processing')
  if not any(a.startswith('--default_sdk_harness_log_level') for a in beam_args):
    args.append('--default_sdk_harness_log_level=WARNING')
  if not any(a.startswith('--direct_num_workers') for a in beam_args):
    args.append(f'--direct_num_workers={max(1, os.cpu_count() or 1)}')
  return args


# OSErrors of the output side a user can fix; they may come back from a Beam worker as text only.
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR)
USER_ERRORS = ('InputError', 'ImageShapeError', 'OutputError', 'FileNotFoundError')


def prepare_output_dir(output_dir):
  """Creates a local output directory and checks that it takes files, before any work; returns whether it was new.

  (Object-store paths are checked by the run itself.)
  """
  from pipelines import core  # pylint: disable=g-import-not-at-top
  if '://' in output_dir:
    return False
  created = not os.path.lexists(output_dir)
  try:
    os.makedirs(os.path.join(output_dir, core.RECORDS_DIR), exist_ok=True)
    probe = os.path.join(output_dir, f'.write-probe-{os.getpid()}')
    with open(probe, 'wb') as f:
      f.write(b'x')
    os.remove(probe)
  except OSError as e:
    raise core.OutputError(f'cannot write to the output directory {output_dir}: {e.strerror or e}') from None
  return created


def user_error(exc, output_dir):
  """A one-line InputError or OutputError for a failure the user can fix, or None for a bug.

  A Beam worker's exception reaches this process as a RuntimeError holding its traceback text, whose last line is
  `module.Type: message [while running 'Step']`; the in-memory runner keeps the type but appends the step.
  """
  name, text = type(exc).__name__, str(exc).strip()
  while name == 'RuntimeError' and text:  # Nested when Beam wraps again: "RuntimeError: OSError: [Errno 28] ...".
    match = re.fullmatch(r'(?:[\w.]+\.)?(\w+): (.*)', text.splitlines()[-1].strip())
    if not match:
      break
    name, text = match.groups()
  text = re.sub(r" \[while running '[^']*'\]$", '', text)
  from pipelines import core  # pylint: disable=g-import-not-at-top
  if name in USER_ERRORS:
    return core.InputError(text)
  match = re.match(r'\[Errno (\d+)\] (.*)', text)
  if match and int(match.group(1)) in OUTPUT_ERRNOS:
    return core.OutputError(f'cannot write to the output directory {output_dir}: {match.group(2)}')
  return None


def run(dataset, input_dir, output_dir, runner='DirectRunner', beam_args=(), options=None, quiet=False):
  """Builds and runs the pipeline; returns the written spec (a dict)."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  from pipelines import core  # pylint: disable=g-import-not-at-top
  if dataset not in DATASETS:
    raise ValueError(f'unknown dataset {dataset!r}; choose one of {", ".join(sorted(DATASETS))}')
  module_name, plan_kwargs = DATASETS[dataset]
  module = importlib.import_module(f'pipelines.datasets.{module_name}')
  plan = module.plan(input_dir, **plan_kwargs, **(options or {}))
  beam_args = list(beam_args)
  pipeline_options = PipelineOptions([f'--runner={runner}'] + direct_runner_args(runner, beam_args) + beam_args)
  created = prepare_output_dir(output_dir)
  start = time.time()
  # Beam's worker processes inherit stderr: with a quiet console their logs go to a discarded file.
  try:
    with console.muted_stderr() if console.is_quiet() else contextlib.nullcontext():
      with beam.Pipeline(options=pipeline_options) as pipeline:
        core.build_pipeline(pipeline, plan, module.read(plan), output_dir)
  except Exception as e:  # pylint: disable=broad-except  (re-raised unless the user can fix it)
    if created:  # Nothing half-written is left behind; an existing directory keeps what it held.
      shutil.rmtree(output_dir, ignore_errors=True)
    error = user_error(e, output_dir)
    if error is None:
      raise
    raise error from e
  finally:
    core.remove_temp_dirs(output_dir)
  spec = core.read_spec(output_dir)
  seconds = time.time() - start
  total = sum(s['num_images'] for s in spec['splits'].values())
  if not quiet:
    print(f'{dataset}: {total} images in {sum(s["num_classes"] for s in spec["splits"].values())} class/split sets, '
          f'{len(spec["bad_images"])} bad, {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} images/s) -> {output_dir}')
    for name, s in spec['splits'].items():
      print(f'  {name}: {s["num_classes"]} classes, {s["num_images"]} images')
    for bad in spec['bad_images'][:10]:
      print(f'  bad image: {bad["source_id"]} (class {bad["class"]}): {bad["error"]}')
  spec['_seconds'] = seconds
  return spec


def main(argv):
  beam_args = argv[1:]
  if not FLAGS.dataset or not FLAGS.output_dir:
    print('error: --dataset and --output_dir are required', file=sys.stderr)
    sys.exit(2)
  try:
    run(FLAGS.dataset, FLAGS.input_dir, FLAGS.output_dir, FLAGS.runner, beam_args, parse_options(FLAGS.option))
  except (FileNotFoundError, ValueError) as e:  # core.InputError and OutputError are ValueErrors.
    if os.environ.get('WTL_DEBUG'):
      raise
    print(f'error: {e}'.replace('\n', ' '), file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  console.quiet()  # Before Beam and TensorFlow are imported (in run() and in the workers).
  flags.FLAGS.set_default('runner', 'DirectRunner')
  app.run(main, flags_parser=lambda argv: flags.FLAGS(argv, known_only=True))

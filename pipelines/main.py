"""Converts a raw dataset into per-class TFRecords and dataset_spec.json with Apache Beam.

  python -m pipelines.main --dataset=mnist --input_dir=RAW --output_dir=OUT [--runner=DirectRunner] [beam options]

Any flag this module does not define is handed to Beam as a pipeline option, so the same pipeline runs on other
runners unchanged, e.g.
  --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp --output_dir=gs://B/mnist
  --runner=FlinkRunner --flink_master=HOST:8081 --environment_type=DOCKER
  --runner=SparkRunner --spark_master_url=spark://HOST:7077
(input and output may then be gs:// or s3:// paths: all IO goes through Beam's FileSystems).
By default it runs on the DirectRunner in multi-process mode with one worker per core.
"""
import importlib
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # pylint: disable=g-import-not-at-top

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


def quiet_beam_logs():
  import logging  # pylint: disable=g-import-not-at-top
  for name in ('apache_beam', 'absl', 'root'):
    logging.getLogger(name).setLevel(logging.WARNING)


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
  quiet_beam_logs()
  pipeline_options = PipelineOptions([f'--runner={runner}'] + direct_runner_args(runner, beam_args) + beam_args)
  start = time.time()
  with beam.Pipeline(options=pipeline_options) as pipeline:
    core.build_pipeline(pipeline, plan, module.read(plan), output_dir)
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
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  flags.FLAGS.set_default('runner', 'DirectRunner')
  app.run(main, flags_parser=lambda argv: flags.FLAGS(argv, known_only=True))

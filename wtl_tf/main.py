"""Entry point: python -m wtl_tf.main --gin_file=... [--gin_param=...] --workdir=DIR."""
import importlib
import logging
import os

from wtl_tf import console  # pylint: disable=g-import-not-at-top
console.quiet()  # Before TensorFlow, absl and gin are imported (see wtl_tf/console.py).

from absl import app, flags  # pylint: disable=g-import-not-at-top
import gin  # pylint: disable=g-import-not-at-top

from wtl_tf import errors  # pylint: disable=g-import-not-at-top
from wtl_tf import rundir  # pylint: disable=g-import-not-at-top
from wtl_tf.errors import ConfigError  # pylint: disable=g-import-not-at-top

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gin')
flags.DEFINE_multi_string('gin_file', [os.path.join(GIN_DIR, 'quickstart.gin')], 'Gin config files.')
flags.DEFINE_multi_string('gin_param', [], 'Gin bindings, e.g. "run_fewshot.epochs=10".')
flags.DEFINE_string('workdir', 'runs/quickstart', 'Run directory (config, logs, results).')
FLAGS = flags.FLAGS


@gin.configurable('main')
def selected_experiment(experiment=gin.REQUIRED):
  """The experiment function a gin file chose (`main.experiment = @run_continual`); called with workdir=."""
  return experiment


def _register_configurables():
  """Imports every module that registers names with gin."""
  for module in ('distribute', 'data.fewshot', 'experiments.continual', 'experiments.fewshot', 'experiments.online',
                 'experiments.online_pretrain', 'learners.fewshot', 'learners.continual.baselines',
                 'learners.continual.lamaml', 'learners.online.baselines', 'learners.online.cmaml', 'models.conv4',
                 'models.mlp', 'models.resnet12', 'modulation', 'optimizers'):
    importlib.import_module(f'wtl_tf.{module}')


def parse_config(gin_files, gin_params):
  """Parses gin files and bindings; every problem becomes a one-paragraph ConfigError."""
  _register_configurables()
  # gin logs a spurious ERROR while probing include paths on the Python path before its search path.
  logging.getLogger('gin.resource_reader').setLevel(logging.CRITICAL)
  gin.add_config_file_search_path(GIN_DIR)
  for path in gin_files:
    if not os.path.exists(path) and not os.path.exists(os.path.join(GIN_DIR, path)):
      raise ConfigError(f'Gin file not found: {path}. Pass an existing file with --gin_file (see gin/).')
  try:
    gin.parse_config_files_and_bindings(gin_files, gin_params, skip_unknown=False)
  except Exception as e:  # gin raises ValueError, SyntaxError-like ParseError, ImportError...
    raise ConfigError(f'Invalid gin configuration: {e}'.replace('\n', ' ')) from None


def run(workdir: str):
  """Runs the configured experiment in `workdir`, held for this process, and writes its operative config."""
  rundir.USE_GIN = True
  run_dir = rundir.RunDir(workdir)
  with run_dir.lock():
    try:
      result = selected_experiment()(workdir=workdir)
    except RuntimeError as e:
      if 'Required bindings' in str(e) or 'No values supplied' in str(e):
        raise ConfigError(f'Missing required gin value: {e}') from None
      raise
    run_dir.write_operative_config()  # Also the bindings first used after training started.
  return result


def _configure_and_run():
  parse_config(FLAGS.gin_file, FLAGS.gin_param)
  return run(FLAGS.workdir)


def main(argv):
  del argv
  # Configuration, data, run directory, divergence: one line. Anything else is a bug.
  return errors.report_user_errors(_configure_and_run)


if __name__ == '__main__':
  app.run(lambda argv: main(argv) and None)

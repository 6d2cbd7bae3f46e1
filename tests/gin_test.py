"""Every gin file parses; a mistyped binding or missing file is a clear one-paragraph error."""
import glob
import os
import subprocess
import sys

import gin
import pytest

from wtl_tf import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'gin', '**', '*.gin'), recursive=True)))
def test_gin_file_parses(path):
  gin.clear_config()
  main.parse_config([path], [])
  gin.clear_config()


def _run(*args, workdir):
  return subprocess.run([sys.executable, '-m', 'wtl_tf.main', f'--workdir={workdir}', *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_mistyped_binding_is_a_clear_error(tmp_path):
  out = _run('--gin_file=demo/synthetic.gin', '--gin_param=run_demo.stepz=3', workdir=tmp_path)
  assert out.returncode == 2
  assert "doesn't have a parameter named 'stepz'" in out.stderr
  assert 'Traceback' not in out.stderr
  assert not os.path.exists(tmp_path / 'results.json')


def test_missing_gin_file_is_a_clear_error(tmp_path):
  out = _run('--gin_file=nope.gin', workdir=tmp_path)
  assert out.returncode == 2 and 'Gin file not found: nope.gin' in out.stderr
  assert 'Traceback' not in out.stderr


def test_demo_runs_and_writes_config(tmp_path):
  out = _run('--gin_file=demo/synthetic.gin', '--gin_param=run_demo.steps=20', workdir=tmp_path)
  assert out.returncode == 0, out.stderr
  assert (tmp_path / 'operative_config.gin').read_text().count('run_demo.steps = 20') == 1
  assert 'sparse_maml' in out.stdout


@pytest.mark.parametrize('row', ['p098_c_maml', 'p098_sparse_c_maml', 'p090_sparse_relu_c_maml', 'p090_maml'])
def test_online_rows_unroll_their_inner_loop(row):
  """osaka.gin's unscoped `InnerLoop.unroll = True` must reach every learner's scoped InnerLoop (the stream's speed)."""
  gin.clear_config()
  try:
    main.parse_config([os.path.join(ROOT, 'gin', 'online', f'{row}.gin')], [])
    learner = row.split('_', 1)[1]
    loop = gin.query_parameter(f'{learner}/ContinualMAML.inner_loop').scoped_configurable_fn()
    assert loop.unroll and loop.num_steps in (8, 16)
  finally:
    gin.clear_config()

"""Every gin file parses; a mistyped binding or missing file is a clear one-paragraph error; a run writes its config."""
import glob
import os
import subprocess
import sys

import gin
import pytest

from wtl_tf import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The synthetic few-shot row (no data needed), shrunk to a few seconds of training by smoke.gin and the bindings below.
SYNTHETIC = ['--gin_file=fewshot/sparse_maml_conv4_synthetic_5w1s.gin', '--gin_file=fewshot/smoke.gin',
             '--gin_param=run_fewshot.show_progress=False', '--gin_param=run_fewshot.meta_batch_size=1',
             '--gin_param=run_fewshot.epochs=1']


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'gin', '**', '*.gin'), recursive=True)))
def test_gin_file_parses(path):
  gin.clear_config()
  main.parse_config([path], [])
  gin.clear_config()


def _run(*args, workdir):
  return subprocess.run([sys.executable, '-m', 'wtl_tf.main', f'--workdir={workdir}', *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_mistyped_binding_is_a_clear_error(tmp_path):
  out = _run(*SYNTHETIC, '--gin_param=run_fewshot.stepz=3', workdir=tmp_path)
  assert out.returncode == 2
  assert "doesn't have a parameter named 'stepz'" in out.stderr
  assert 'Traceback' not in out.stderr
  assert not os.path.exists(tmp_path / 'results.json')  # Reported before any work.
  assert not os.path.exists(tmp_path / 'checkpoints') and not os.path.exists(tmp_path / 'metrics.jsonl')


def test_missing_gin_file_is_a_clear_error(tmp_path):
  out = _run('--gin_file=nope.gin', workdir=tmp_path)
  assert out.returncode == 2 and 'Gin file not found: nope.gin' in out.stderr
  assert 'Traceback' not in out.stderr


def test_synthetic_row_runs_and_writes_config(tmp_path):
  out = _run(*SYNTHETIC, '--gin_param=run_fewshot.batches_per_epoch=2', workdir=tmp_path)
  assert out.returncode == 0, out.stderr
  assert (tmp_path / 'operative_config.gin').read_text().count('run_fewshot.batches_per_epoch = 2') == 1
  assert (tmp_path / 'results.json').exists()
  assert 'sparse_maml' in out.stdout


@pytest.mark.parametrize('row', ['p098_c_maml', 'p098_sparse_c_maml', 'p090_sparse_relu_c_maml', 'p090_maml'])
def test_online_rows_unroll_their_inner_loop(row):
  """osaka.gin's unscoped `InnerLoop.unroll = True` must reach every learner's scoped InnerLoop (the stream's speed)."""
  from wtl_tf.learners.online.cmaml import ContinualMAML  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    main.parse_config([os.path.join(ROOT, 'gin', 'online', f'{row}.gin')], [])
    learner = gin.query_parameter('run_online.learner')
    assert learner.scopes == [row.split('_', 1)[1]]
    with gin.config_scope(learner.scopes):  # The scope the experiment builds the learner in.
      loop = gin.get_bindings(ContinualMAML)['inner_loop']
    assert loop.unroll and loop.num_steps in (8, 16)
  finally:
    gin.clear_config()


@pytest.mark.parametrize('layers', ['continual', 'online'])
def test_learner_layers_set_a_learner_for_every_row(layers):
  """Row files are one benchmark/column layer plus one learner layer (gin/<setting>/learners/<learner>.gin)."""
  learners = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(ROOT, 'gin', layers, 'learners', '*.gin'))}
  assert learners
  rows = [p for p in glob.glob(os.path.join(ROOT, 'gin', layers, '*_*.gin'))
          if not os.path.basename(p).startswith('mnist_')]
  for path in rows:
    name = os.path.basename(path)[:-4]
    learner = next(l for l in sorted(learners, key=len, reverse=True) if name.endswith('_' + l))
    with open(path, encoding='utf-8') as f:
      assert f"include '{layers}/learners/{learner}.gin'" in f.read(), path



def _built(row, *bindings):
  gin.clear_config()
  try:
    main.parse_config([row], list(bindings))
    return main.selected_experiment()(workdir='unused')
  finally:
    gin.clear_config()


def test_model_width_switches_reach_the_model():
  """A width binding must change the built model: a registered model that no gin layer references would ignore it
  without a word (Figure 3 right's `mlp.hidden_sizes`, the online `osaka_convnet.hidden_size`)."""
  continual = _built('continual/rotations_sparse_la_maml.gin', 'mlp.hidden_sizes = (7, 9)',
                     'run_continual.build_only = True')['sparse_la_maml']
  assert [i.shape for i in continual.infos if i.role == 'kernel'] == [(784, 7), (7, 9), (9, 10)]
  online = _built('online/p098_c_maml.gin', 'osaka_convnet.hidden_size = 8', 'run_online.build_only = True')['learner']
  assert {i.shape[-1] for i in online.infos if i.role == 'kernel' and len(i.shape) == 4} == {8}

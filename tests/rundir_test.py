"""The run directory (wtl_tf/rundir.py): atomic checkpoints and results, the run's identity, the workdir lock, and
main.py's one-line errors versus tracebacks."""
import errno
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest

from tests.continual_experiment_test import _lamaml, _train, synthetic_tasks
from wtl_tf import modulation, rundir
from wtl_tf.errors import WorkdirError
from wtl_tf.learners.continual.lamaml import LaMAML

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEWSHOT = ['fewshot/sparse_maml_conv4_synthetic_5w1s.gin', 'fewshot/smoke.gin']
SMALL = ['run_fewshot.epochs=1', 'run_fewshot.batches_per_epoch=2', 'run_fewshot.show_progress=False',
         'SyntheticData.image_shape=(16, 16, 1)', 'conv4.hidden_size=8', 'INNER_STEPS=1']


@gin.configurable
def buggy_model(**kwargs):
  """A model function with a bug (used through gin by the CLI test below)."""
  raise ValueError(f'a bug in the model code ({sorted(kwargs)})')


def _temporaries(path):
  return [os.path.join(d, f) for d, _, files in os.walk(path) for f in files if f.endswith(rundir.TMP_SUFFIX)]


def test_a_kill_between_state_and_pointer_resumes_from_one_consistent_checkpoint(tmp_path, monkeypatch):
  tasks = synthetic_tasks()
  reference = _train(tmp_path / 'whole', tasks)
  calls = {'n': 0}

  def killed_after_the_state_of_task_2():
    calls['n'] += 1
    if calls['n'] == 2:
      raise KeyboardInterrupt

  monkeypatch.setattr(rundir, '_after_state_write', killed_after_the_state_of_task_2)
  with pytest.raises(KeyboardInterrupt):
    _train(tmp_path / 'killed', tasks)
  monkeypatch.setattr(rundir, '_after_state_write', lambda: None)
  state, progress = rundir.RunDir(str(tmp_path / 'killed')).load_checkpoint()
  assert progress['tasks_done'] == 1  # Task 2's weights were written, its pointer was not: task 1's pair holds.
  resumed = _train(tmp_path / 'killed', tasks)
  assert resumed['acc_matrix'] == reference['acc_matrix'] and resumed['sparsity'] == reference['sparsity']
  assert len([f for f in os.listdir(tmp_path / 'killed' / 'checkpoints') if f.endswith('.npz')]) == 1
  assert state and not _temporaries(tmp_path / 'killed')


def test_a_truncated_results_json_does_not_skip_the_run(tmp_path):
  tasks = synthetic_tasks()
  first = _train(tmp_path, tasks)
  text = (tmp_path / 'results.json').read_text()
  (tmp_path / 'results.json').write_text(text[:len(text) // 2])
  assert rundir.RunDir(str(tmp_path)).results() is None
  again = _train(tmp_path, tasks)  # Finishes the run again (from the last checkpoint) and rewrites results.json.
  assert json.loads((tmp_path / 'results.json').read_text()) == json.loads(json.dumps(again))
  assert again['acc_matrix'] == first['acc_matrix']


def test_resuming_under_other_settings_is_refused_and_names_them(tmp_path):
  tasks = synthetic_tasks()
  _train(tmp_path, tasks)
  other = lambda model, seed, batch_size=10: LaMAML(model, modulation=modulation.ScaledBinaryMask(step_size=0.3),
                                                    memories=20, seed=seed, batch_size=batch_size, jit_compile=False)
  with pytest.raises(WorkdirError, match=r'other settings \(learner\.modulation\.step_size: 0\.15 -> 0\.3\)'):
    _train(tmp_path, tasks, factory=other)
  assert _train(tmp_path, tasks, factory=_lamaml)['num_tasks'] == 3  # The original settings are accepted.


def test_a_changed_gin_binding_is_refused_on_resume(tmp_path, monkeypatch):
  from wtl_tf import main  # pylint: disable=g-import-not-at-top  (not at the top: the CLI test imports this file)
  monkeypatch.setattr(rundir, 'USE_GIN', False)  # main.run sets it; restored afterwards.
  try:
    for params in ([], ['run_fewshot.show_progress=True']):  # A volatile binding may change.
      gin.clear_config()
      main.parse_config(FEWSHOT, SMALL + params)
      main.run(str(tmp_path))
    assert 'SyntheticData.noise = 1.0' in (tmp_path / 'operative_config.gin').read_text()
    gin.clear_config()
    main.parse_config(FEWSHOT, SMALL + ['SyntheticData.noise=2.0'])
    with pytest.raises(WorkdirError, match=r'SyntheticData\.noise: 1\.0 -> 2\.0'):
      main.run(str(tmp_path))
  finally:
    gin.clear_config()


def test_write_failures_are_workdir_errors_and_leave_no_temporary_files(tmp_path, monkeypatch):
  run_dir = rundir.RunDir(str(tmp_path))
  run_dir.save_checkpoint({'w': np.ones(3)}, {'step': 1})

  def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(np, 'savez', disk_full)
  with pytest.raises(WorkdirError, match='No space left on device'):
    run_dir.save_checkpoint({'w': np.zeros(3)}, {'step': 2})
  monkeypatch.undo()
  state, progress = run_dir.load_checkpoint()
  assert progress == {'step': 1} and state['w'].tolist() == [1.0, 1.0, 1.0]
  assert not _temporaries(tmp_path)


def _cli(workdir, *params, gin_files=FEWSHOT):
  args = [sys.executable, '-m', 'wtl_tf.main', f'--workdir={workdir}'] + [f'--gin_file={f}' for f in gin_files]
  return subprocess.run(args + [f'--gin_param={p}' for p in SMALL + list(params)], capture_output=True, text=True,
                        cwd=ROOT, timeout=300)


def _one_line_error(out, message):
  errors = [line for line in out.stderr.splitlines() if line.startswith('error:')]
  assert out.returncode == 2 and len(errors) == 1 and message in errors[0], out.stderr[-3000:]
  assert 'Traceback' not in out.stderr, out.stderr[-3000:]


def test_unusable_or_busy_workdir_is_one_line_on_the_command_line(tmp_path):
  (tmp_path / 'a_file').write_text('not a directory')
  _one_line_error(_cli(tmp_path / 'a_file'), 'it exists and is not a directory')
  _one_line_error(_cli(tmp_path / 'a_file' / 'run'), 'a parent is not a directory')
  if os.geteuid() != 0:  # root writes anywhere.
    (tmp_path / 'read_only').mkdir(mode=0o555)
    _one_line_error(_cli(tmp_path / 'read_only'), 'Permission denied')
  with rundir.RunDir(str(tmp_path / 'busy')).lock():
    _one_line_error(_cli(tmp_path / 'busy'), 'is in use by another process')
  assert sorted(os.listdir(tmp_path / 'busy')) == ['.lock'] and not _temporaries(tmp_path)


def test_a_real_bug_keeps_its_traceback(tmp_path):
  out = _cli(tmp_path / 'run', 'import tests.rundir_test', 'run_fewshot.model_fn=@buggy_model')
  assert out.returncode == 1, out.stderr[-3000:]
  assert 'Traceback' in out.stderr and 'ValueError: a bug in the model code' in out.stderr, out.stderr[-3000:]
  assert not [line for line in out.stderr.splitlines() if line.startswith('error:')]

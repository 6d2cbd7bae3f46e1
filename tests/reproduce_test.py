"""tools/reproduce.py: the paper's numbers per row, sweeps over seeds that resume instead of redoing (few-shot,
continual, online), and one-line errors before any run."""
import json
import os
import subprocess
import sys

import pytest

from tests.continual_experiment_test import tiny_mnist  # pylint: disable=unused-import  (a fixture)
from tests.online_experiment_test import specs  # pylint: disable=unused-import  (a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

import paper  # pylint: disable=g-import-not-at-top,wrong-import-position
import reproduce  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_paper_values_per_row():
  assert paper.fewshot('sparse_maml_conv4_miniimagenet_5w5s') == {
      'test_accuracy': (67.03, 0.74), 'sparsity': (74.98, 0.10)}
  cross = paper.fewshot('sparse_maml_plus_conv4_miniimagenet_5w1s_crossdomain')
  assert cross['cross_domain/cub'] == (43.43, 1.04) and cross['test_accuracy'] == (51.04, 0.59)
  assert paper.fewshot('sparse_relu_maml_resnet12_miniimagenet_5w5s') == {'test_accuracy': (73.01, 0.24)}
  assert paper.fewshot('boil_resnet12_miniimagenet_5w1s') == {}  # Not in the paper.
  assert paper.fewshot('fig2/sparse_maml_conv4_miniimagenet_5w1s_k15') == {}
  assert paper.continual('rotations', 'sparse_la_maml') == {'ra': (77.77, 0.58), 'bti': (-8.16, 0.61)}
  assert paper.continual('rotations', 'er') == {}
  assert paper.online(0.98, 'c_maml') == (92.8, 0.6) and paper.online(0.9, 'sparse_relu_c_maml') == (86.1, 0.2)
  rows = reproduce.fewshot_rows()
  assert 'fig2/sparse_maml_conv4_miniimagenet_5w1s_k15' in rows and 'base' not in rows and 'smoke' not in rows
  assert not any(r.startswith('learners/') for r in rows)
  assert {'la_maml', 'sparse_la_maml', 'baseline', 'gem', 'mer', 'er'} <= set(reproduce.learner_rows(
      'continual', 'many_permutations'))
  assert len(reproduce.learner_rows('online', 'p090')) == 7


def test_fewshot_smoke_sweep_resumes_and_aggregates(tmp_path, capsys):
  args = ['--setting=fewshot', '--rows=sparse_maml_conv4_omniglot_5w1s', '--smoke', '--synthetic',
          f'--workdir={tmp_path}', '--gin_param=run_fewshot.meta_batch_size=2']
  reproduce.main(args + ['--seeds=0'])
  row_dir = tmp_path / 'sparse_maml_conv4_omniglot_5w1s_smoke_synthetic'
  stamp = os.path.getmtime(row_dir / 'seed_0' / 'results.json')
  summary = reproduce.main(args + ['--seeds=0,1'])['sparse_maml_conv4_omniglot_5w1s']
  assert os.path.getmtime(row_dir / 'seed_0' / 'results.json') == stamp  # Seed 0 was read back, not rerun.
  assert summary['test_accuracy'][2] == 2 and 0 <= summary['test_accuracy'][0] <= 100
  assert 30 < summary['sparsity'][0] < 70
  with open(row_dir / 'summary.json', encoding='utf-8') as f:
    saved = json.load(f)
  assert saved['seeds'] == [0, 1] and saved['ours']['test_accuracy']['n'] == 2
  assert '| test_accuracy |' in capsys.readouterr().out and (row_dir / 'table.md').exists()


def test_continual_sweep_resumes_and_plots(tiny_mnist, tmp_path, capsys):  # pylint: disable=redefined-outer-name
  args = ['--setting=continual', '--benchmark=rotations', '--learners=la_maml', '--smoke', f'--workdir={tmp_path}',
          f'--gin_param=Benchmark.raw_dir="{tiny_mnist}"', f'--gin_param=Benchmark.records_dir="{tmp_path}/records"']
  reproduce.main(args + ['--seeds=0'])
  first = tmp_path / 'rotations_smoke' / 'la_maml' / 'seed_0' / 'results.json'
  stamp = os.path.getmtime(first)
  summary = reproduce.main(args + ['--seeds=0,1'])
  assert os.path.getmtime(first) == stamp
  assert summary['la_maml']['seeds'] == [0, 1] and len(summary['la_maml']['ra_runs']) == 2
  out = capsys.readouterr().out
  assert '| la_maml |' in out and '77.42 ± 0.65' in out  # Next to the paper's Table-5 cell.
  assert (tmp_path / 'rotations_smoke' / 'sparsity.png').exists()


@pytest.mark.slow  # ~40 s; the pre-training cache is also covered by online_experiment_test.
def test_online_column_resumes_and_shares_pretraining(specs, tmp_path, capsys):  # pylint: disable=redefined-outer-name
  params = [f"run_online.{k}_records='{v}'" for k, v in specs.items()] + [
      'run_online.model_fn=@osaka_convnet', 'osaka_convnet.hidden_size=8', 'c_maml/InnerLoop.num_steps=1',
      'Pretraining.train_classes=(0, 20)', 'Pretraining.val_classes=(20, 30)', 'run_online.num_steps=20']
  args = ['--setting=online', '--p=0.98', '--learners=c_maml', '--smoke', f'--workdir={tmp_path}'] + [
      f'--gin_param={p}' for p in params]
  reproduce.main(args + ['--seeds=0'])
  first = tmp_path / 'p098_smoke' / 'c_maml' / 'seed_0' / 'results.json'
  stamp = os.path.getmtime(first)
  summary = reproduce.main(args + ['--seeds=0,1'])
  assert os.path.getmtime(first) == stamp  # Seed 0 was read back, not rerun.
  assert len(summary['c_maml']['cumulative_runs']) == 2 and 0 <= summary['c_maml']['cumulative'][0] <= 100
  with open(tmp_path / 'p098_smoke' / 'c_maml' / 'seed_1' / 'results.json', encoding='utf-8') as f:
    assert json.load(f)['pretraining']['reused']  # Seed 1 took seed 0's pre-trained model.
  out = capsys.readouterr().out
  assert '| c_maml |' in out and '92.8 ± 0.6' in out and (tmp_path / 'p098_smoke' / 'cumulative.png').exists()


@pytest.mark.slow  # ~90 s end to end; the selection logic runs by default in the fake-executor test below.
def test_grid_tunes_on_validation_seeds_then_reports_with_the_winner(tiny_mnist, tmp_path, capsys):
  # pylint: disable=redefined-outer-name
  args = ['--setting=continual', '--benchmark=permutations', '--learners=sparse_la_maml', '--smoke',
          f'--workdir={tmp_path}', f'--gin_param=Benchmark.raw_dir="{tiny_mnist}"',
          f'--gin_param=Benchmark.records_dir="{tmp_path}/records"', '--seeds=0', '--val_seeds=100,101',
          '--grid=sparse_la_maml/ScaledBinaryMask.step_size=0.05,0.2', '--grid=sparse_la_maml/LaMAML.lr_m=0.1']
  summary = reproduce.main(args)
  base = tmp_path / 'permutations_smoke' / 'sparse_la_maml'
  grid = json.load(open(base / 'grid' / 'grid.json', encoding='utf-8'))
  assert [p['point'] for p in grid['points']] == ['ScaledBinaryMask.step_size=0.05,LaMAML.lr_m=0.1',
                                                  'ScaledBinaryMask.step_size=0.2,LaMAML.lr_m=0.1']
  for point in grid['points']:
    assert point['seeds'] == [100, 101]
    for seed, score in zip(point['seeds'], point['scores']):
      run = base / 'grid' / point['point'] / f'seed_{seed}'
      result = json.load(open(run / 'results.json', encoding='utf-8'))
      assert score == pytest.approx(100 * result['ra'])  # Scored by RA on the validation seed's own benchmark.
      assert 'Benchmark.seed = %d' % seed in (run / 'operative_config.gin').read_text()
  winner = max(grid['points'], key=lambda p: p['mean'])
  assert grid['winner'] == winner['point']
  assert '**sparse_la_maml/ScaledBinaryMask.step_size=%s; sparse_la_maml/LaMAML.lr_m=0.1**' % (
      winner['bindings'][0].split('= ')[1]) in (base / 'grid' / 'grid.md').read_text()
  step = winner['bindings'][0].split('= ')[1]
  config = (base / 'seed_0' / 'operative_config.gin').read_text()
  assert f'sparse_la_maml/ScaledBinaryMask.step_size = {step}' in config and 'Benchmark.seed = 0' in config
  assert summary['sparse_la_maml']['seeds'] == [0]
  assert json.load(open(base / 'tuned.json', encoding='utf-8'))['bindings'] == winner['bindings']
  assert 'tuned on validation seeds' in capsys.readouterr().out
  stamps = {p: os.path.getmtime(p) for p in base.rglob('results.json')}
  reproduce.main(args)  # Resumes: every run is read back.
  assert stamps == {p: os.path.getmtime(p) for p in base.rglob('results.json')}
  loser = [p for p in grid['points'] if p is not winner][0]
  with pytest.raises(SystemExit):  # Only the loser left: a different winner, while seed 0 holds the old one's run.
    reproduce.main(args[:-2] + [f'--grid={loser["bindings"][0].replace(" = ", "=")}',
                                '--grid=sparse_la_maml/LaMAML.lr_m=0.1'])
  assert 'move' in capsys.readouterr().err


def test_grid_winner_is_the_best_mean_and_the_first_of_ties(monkeypatch, tmp_path):
  scores = {('0.1', '1'): [70, 72], ('0.1', '2'): [75, 71], ('0.2', '1'): [80, 66], ('0.2', '2'): [60, 60]}

  def fake_execute(run):
    step = [p for p in run.gin_params if 'step_size' in p][-1].split('= ')[1]
    lr = [p for p in run.gin_params if 'lr_m' in p][-1].split('= ')[1]
    return {'ra': scores[(step, lr)][[100, 101].index(run.seed)] / 100}
  monkeypatch.setattr(reproduce, 'execute', fake_execute)
  reproduce.parse_flags(['reproduce', '--setting=continual', '--learners=sparse_la_maml', f'--workdir={tmp_path}',
                         '--grid=sparse_la_maml/ScaledBinaryMask.step_size=0.1,0.2',
                         '--grid=sparse_la_maml/LaMAML.lr_m=1,2'])
  (_, runs), = reproduce.plan('continual', [0, 1], str(tmp_path)).items()
  (_, val_runs), = reproduce.plan('continual', [100, 101], str(tmp_path)).items()
  tuned = reproduce.tune(runs, reproduce.grid_runs(runs, val_runs))
  # Means 71, 73, 73, 60: the second point wins (the third ties it but comes later).
  assert [r.gin_params[-2:] for r in tuned] == [['sparse_la_maml/ScaledBinaryMask.step_size = 0.1',
                                                'sparse_la_maml/LaMAML.lr_m = 2']] * 2
  assert [r.seed for r in tuned] == [0, 1]
  grid_md, = tmp_path.rglob('grid.md')
  assert '| **sparse_la_maml/ScaledBinaryMask.step_size=0.1; sparse_la_maml/LaMAML.lr_m=2** |' in grid_md.read_text()
  assert reproduce.split_values('0.1, (1, 2),"a,b"') == ['0.1', '(1, 2)', '"a,b"']


def test_a_tuned_learner_keeps_its_winner_without_the_grid_flags(monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(reproduce, 'execute', lambda run: pytest.fail(f'{run.label} seed {run.seed} must not run'))
  learner_dir = tmp_path / 'rotations' / 'sparse_la_maml'
  learner_dir.mkdir(parents=True)
  tuned = ['sparse_la_maml/ScaledBinaryMask.step_size = 0.2', 'sparse_la_maml/LaMAML.lr_m = 0.3']
  (learner_dir / 'tuned.json').write_text(json.dumps({'bindings': tuned}))
  reproduce.parse_flags(['reproduce', '--setting=continual', '--learners=la_maml,sparse_la_maml',
                         f'--workdir={tmp_path}', '--gin_param=run_continual.epochs=1'])
  (_, runs), = reproduce.plan('continual', [0, 1], str(tmp_path)).items()
  runs = reproduce.with_tuned(runs)
  assert [(r.name, r.seed, r.gin_params[-2:] == tuned) for r in runs] == [
      ('la_maml', 0, False), ('la_maml', 1, False), ('sparse_la_maml', 0, True), ('sparse_la_maml', 1, True)]
  assert capsys.readouterr().out.count('using the tuned bindings') == 1
  with pytest.raises(SystemExit) as exit_info:  # A binding that contradicts the tuned runs: one line, nothing runs.
    reproduce.main(['--setting=continual', '--learners=sparse_la_maml', f'--workdir={tmp_path}',
                    '--gin_param=sparse_la_maml/LaMAML.lr_m = 0.1'])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'sparse_la_maml/LaMAML.lr_m' in err and 'tuned.json' in err
  assert sorted(os.listdir(learner_dir)) == ['tuned.json']


@pytest.mark.parametrize('args, message', [
    (['--setting=tables'], 'setting'),
    (['--rows=sparse_maml_conv4_omniglot_5w1s'], '--setting is required'),
    (['--setting=fewshot', '--rowz=x'], "Unknown command line flag 'rowz'"),
    (['--setting=fewshot', '--rows=no_such_row'], "no gin file for row 'no_such_row'"),
    (['--setting=fewshot', '--short', '--rows=sparse_maml_conv4_omniglot_5w1s'], '--short does not apply'),
    (['--setting=online', '--p=0.5'], '--p must be one of'),
    (['--setting=continual', '--learners=nope'], 'no gin file gin/continual/rotations_nope.gin'),
    (['--setting=continual', '--seeds=0,x'], '--seeds must be'),
    (['--setting=continual', '--gin_param=la_maml/LaMAML.glancez=3'], "doesn't have a parameter named 'glancez'"),
    (['--setting=continual', '--learners=sparse_la_maml', '--grid=LaMAML.lr_m=0.1', '--seeds=0,100'],
     '--val_seeds and --seeds share 100'),
    (['--setting=continual', '--grid=LaMAML.lr_m=0.1'], 'one learner'),
    (['--setting=continual', '--learners=la_maml', '--grid=lr_m=0.1'], '--grid must look like'),
    (['--setting=continual', '--learners=la_maml', '--val_seeds=5'], 'only with --grid'),
    (['--setting=continual', '--learners=la_maml', '--grid=la_maml/LaMAML.lr_mm=0.1,0.2'],
     "doesn't have a parameter named 'lr_mm'"),
])
def test_bad_flags_and_gin_are_one_line_before_any_run(tmp_path, capsys, args, message):
  # In-process (a subprocess per case cost ~6 s of TensorFlow import each); the real command line is checked below.
  with pytest.raises(SystemExit) as exit_info:
    reproduce.main([f'--workdir={tmp_path}', *args])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  errors = [line for line in err.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and message in errors[0], err
  assert 'Traceback' not in err and os.listdir(tmp_path) == []  # Nothing ran.


@pytest.mark.parametrize('args, message', [
    (['--setting=fewshot', '--rowz=x'], "Unknown command line flag 'rowz'"),
    (['--setting=continual', '--learners=la_maml', '--grid=la_maml/LaMAML.lr_mm=0.1,0.2'],
     "doesn't have a parameter named 'lr_mm'"),
])
def test_the_command_line_prints_one_error_line_and_exits_2(tmp_path, args, message):
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'reproduce.py'), f'--workdir={tmp_path}',
                        *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 2, out.stderr
  errors = [line for line in out.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and message in errors[0], out.stderr
  assert 'Traceback' not in out.stderr and os.listdir(tmp_path) == []


def test_list_and_help(capsys):
  reproduce.main(['--setting=online', '--p=0.9', '--list'])
  assert 'sparse_relu_c_maml' in capsys.readouterr().out.split()
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'reproduce.py'), '--help'], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 0 and '--setting' in out.stdout and '--gin_param' in out.stdout

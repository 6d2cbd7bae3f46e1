"""SavedModel export (wtl_tf/export.py, tools/verify_export.py) and mask analysis (wtl_tf/analyze.py), on real run
directories: the exported model runs in a process that cannot import wtl_tf and gives the learner's logits."""
import itertools
import json
import os
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest

from wtl_tf import analyze
from wtl_tf import api
from wtl_tf import export
from wtl_tf import inner_loop
from wtl_tf import main as wtl_main
from wtl_tf import rundir
from wtl_tf import saved_run
from wtl_tf.errors import ConfigError
from wtl_tf.models.resnet12 import resnet12
from tests.continual_experiment_test import tiny_mnist  # pylint: disable=unused-import  (a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import verify_export  # pylint: disable=g-import-not-at-top,wrong-import-position

SMOKE = ['run_fewshot.epochs=2', 'run_fewshot.batches_per_epoch=3', 'run_fewshot.num_val_episodes=4',
         'run_fewshot.num_test_episodes=4', 'run_fewshot.num_final_episodes=12', 'run_fewshot.show_progress=False',
         'INNER_STEPS=2']
# Runs in a process where `import wtl_tf` fails; prints one JSON line.
PLAIN_TF = '''
import json, sys
sys.modules["wtl_tf"] = None
import numpy as np, tensorflow as tf
e = np.load(sys.argv[1]); m = tf.saved_model.load(sys.argv[2])
out = {"logits": m.adapt_and_predict(tf.constant(e["sx"]), tf.constant(e["sy"]), tf.constant(e["qx"]))["logits"].numpy().tolist(),
       "predict": m.signatures["predict"](x=tf.constant(e["qx"]))["logits"].numpy().tolist(),
       "sizes": {k: v.numpy().tolist() for k, v in m.signatures["step_sizes"]().items()}, "errors": {}}
bad = {"channels": (np.concatenate([e["sx"]] * 2, -1), e["sy"], np.concatenate([e["qx"]] * 2, -1)),
       "label": (e["sx"], np.full_like(e["sy"], int(sys.argv[3])), e["qx"]),
       "empty": (e["sx"][:0], e["sy"][:0], e["qx"])}
for name, (sx, sy, qx) in bad.items():
  try:  # Through the signature, as TF Serving calls it.
    m.signatures["adapt_and_predict"](support_x=tf.constant(sx), support_y=tf.constant(sy), query_x=tf.constant(qx))
    out["errors"][name] = None
  except tf.errors.InvalidArgumentError as err:
    out["errors"][name] = [line for line in str(err).splitlines() if "assertion failed" in line][0]
print(json.dumps(out))
'''


def _fewshot_run(workdir, seed):
  out = subprocess.run([sys.executable, '-m', 'wtl_tf.main', '--gin_file=fewshot/sparse_maml_conv4_synthetic_5w1s.gin',
                        f'--workdir={workdir}', f'--gin_param=run_fewshot.seed={seed}']
                       + [f'--gin_param={p}' for p in SMOKE], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return str(workdir)


@pytest.fixture(scope='module')
def fewshot_runs(tmp_path_factory):
  """Two seeds of one synthetic sparse-MAML Conv4 row (28x28x1, 5-way 1-shot), trained for 6 meta-updates."""
  root = tmp_path_factory.mktemp('fewshot')
  return [_fewshot_run(root / f'seed_{s}', s) for s in (0, 1)]


def _plain_tf(export_dir, episode, ways, tmp_path):
  path = tmp_path / 'episode.npz'
  np.savez(path, **episode)
  out = subprocess.run([sys.executable, '-c', PLAIN_TF, str(path), str(export_dir), str(ways)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def _episode(shape, ways, seed=0):
  rng = np.random.default_rng(seed)
  return {'sx': rng.normal(size=(2 * ways,) + shape).astype(np.float32),
          'sy': np.tile(np.arange(ways, dtype=np.int32), 2),
          'qx': rng.normal(size=(3 * ways,) + shape).astype(np.float32)}


def _check_against_learner(learner, export_dir, steps, tmp_path, ways=5):
  """The SavedModel, in plain TensorFlow, gives the learner's logits, theta's logits and c * S(m)."""
  shape = tuple(int(d) for d in learner.model.inputs[0].shape[1:])
  episode = _episode(shape, ways)
  got = _plain_tf(export_dir, episode, ways, tmp_path)
  theta, state = learner.read(learner.theta), learner.read(learner.non_trainable)
  sizes = learner.step_sizes(learner.read(learner.mask_logits), learner.noise_key(0, 0))
  fast = inner_loop.adapt(learner.model, theta, state, sizes, episode['sx'], episode['sy'], steps)
  want = inner_loop.forward(learner.model, fast, state, episode['qx']).numpy()
  # float32: the same graph run in another process; measured differences are ~1e-6 on logits of size ~1-10.
  np.testing.assert_allclose(got['logits'], want, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(got['predict'], inner_loop.forward(learner.model, theta, state, episode['qx']).numpy(),
                             atol=1e-4, rtol=1e-4)
  assert sorted(got['sizes']) == sorted(i.name for i in learner.infos)  # A signature's outputs come back sorted.
  for info, size, t in zip(learner.infos, sizes, theta):
    expected = np.broadcast_to(0.0 if size is None else np.asarray(size), t.shape)
    np.testing.assert_allclose(got['sizes'][info.name], expected, rtol=1e-6)
  assert not np.allclose(got['logits'], got['predict'])  # Adaptation happened.
  return got


def test_fewshot_run_exports_and_matches_the_run_in_plain_tensorflow(fewshot_runs, tmp_path):
  out_dir = tmp_path / 'export'
  cli = subprocess.run([sys.executable, '-m', 'wtl_tf.export', f'--run_dir={fewshot_runs[0]}',
                        f'--output_dir={out_dir}'], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert cli.returncode == 0, cli.stderr[-3000:]
  assert 'exported sparse_maml (fewshot, best checkpoint)' in cli.stdout and 'K = 2' in cli.stdout
  assert cli.stderr.strip() == ''  # Quiet console.
  meta = json.load(open(out_dir / export.METADATA, encoding='utf-8'))
  assert meta['input_shape'] == [28, 28, 1] and meta['ways'] == 5 and meta['inner_steps'] == 2
  run = saved_run.load_run(fewshot_runs[0])
  got = _check_against_learner(run.learner, out_dir, 2, tmp_path)
  assert 'support_x must have the shape [n, 28, 28, 1]' in got['errors']['channels']
  assert 'support_y must lie in [0, 5)' in got['errors']['label']
  assert 'the support set is empty' in got['errors']['empty']
  # The run's own test accuracy on its fixed final episodes, reproduced by the SavedModel in plain TensorFlow.
  result = verify_export.verify(fewshot_runs[0], str(out_dir), 12, 0.1)
  with open(os.path.join(fewshot_runs[0], 'results.json'), encoding='utf-8') as f:
    assert result['run_accuracy'] == pytest.approx(json.load(f)['test_accuracy'], abs=1e-6)
  assert result['ok'] and result['difference_points'] <= 0.1 and result['max_logit_difference'] < 1e-4
  cli_show = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'saved_model_cli'), 'show', '--all',
                             '--dir', str(out_dir)], capture_output=True, text=True, timeout=300)
  assert cli_show.returncode == 0, cli_show.stderr[-2000:]
  for text in ("signature_def['adapt_and_predict']", "signature_def['predict']", "signature_def['step_sizes']",
               'shape: (-1, 28, 28, 1)', 'shape: (-1, 5)', "outputs['conv1/kernel']"):
    assert text in cli_show.stdout, text


def test_resnet12_learner_exports_from_python(tmp_path):
  learner = api.fewshot_learner(resnet12(input_shape=(16, 16, 3), num_classes=5, widths=(8, 8, 16, 16), seed=3),
                                inner_steps=2)
  learner.mask_logits[0].assign(-learner.mask_logits[0])  # Flip a mask so that S(m) is not the initial one.
  export.export(learner, tmp_path / 'export')
  _check_against_learner(learner, tmp_path / 'export', 2, tmp_path)


@pytest.mark.parametrize('row, params, setting, ways', [
    ('online/p098_c_maml.gin', ['run_online.build_only = True', 'osaka_convnet.hidden_size = 8'], 'online', 10),
    pytest.param('fewshot/sparse_maml_resnet12_miniimagenet_5w1s.gin',
                 ['run_fewshot.build_only = True', 'resnet12.widths = (8, 8, 16, 16)', 'INNER_STEPS = 2'], 'fewshot',
                 5, marks=pytest.mark.slow)])  # ResNet-12 export also runs by default, from Python (above).
def test_run_directories_of_cmaml_and_resnet12_export(row, params, setting, ways, tmp_path, monkeypatch):
  """A run directory as the experiments leave it (operative config, last checkpoint), built from the row's gin."""
  run_dir = tmp_path / 'run'
  gin.clear_config()
  try:
    wtl_main.parse_config([row], params)
    built = wtl_main.selected_experiment()(workdir=str(run_dir))['learner']
    monkeypatch.setattr(rundir, 'USE_GIN', True)  # As main.run sets it; restored after the test.
    rundir.RunDir(str(run_dir)).write_operative_config()
  finally:
    gin.clear_config()
  built.theta[0].assign(built.theta[0] * 1.5)  # A state the fresh build would not have: restore must load it.
  if built.mask_logits:
    built.mask_logits[-1].assign(-built.mask_logits[-1])
  rundir.RunDir(str(run_dir)).save_checkpoint(built.state(), {'step': 0})
  meta = export.export(str(run_dir), tmp_path / 'export')
  assert meta['setting'] == setting and meta['checkpoint'] == 'last' and meta['ways'] == ways
  loop = getattr(built, 'eval_inner_loop', None) or built.inner_loop
  _check_against_learner(built, tmp_path / 'export', loop.num_steps, tmp_path, ways=ways)


def test_export_refuses_bad_requests_in_one_line(fewshot_runs, tmp_path):
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'x').write_text('x')
  for args, message in (([f'--run_dir={tmp_path}/nothing', f'--output_dir={tmp_path}/o'], 'not a wtl_tf run directory'),
                        ([f'--run_dir={fewshot_runs[0]}', f'--output_dir={tmp_path}/full'], 'not an empty directory'),
                        ([f'--output_dir={tmp_path}/o'], '--run_dir and --output_dir are required')):
    out = subprocess.run([sys.executable, '-m', 'wtl_tf.export', *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 2 and 'Traceback' not in out.stderr, out.stderr[-2000:]
    assert out.stderr.startswith('error:') and message in out.stderr, out.stderr
  usage = subprocess.run([sys.executable, '-m', 'wtl_tf.export', '--help'], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
  assert usage.returncode == 0 and 'adapt_and_predict' in usage.stdout and '--output_dir' in usage.stdout
  plus = api.fewshot_learner(lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]),
                             modulation='sparse_maml_plus')
  with pytest.raises(ConfigError, match='fresh masks'):
    export.export(plus, tmp_path / 'plus')


def test_jaccard_chance_and_unit_statistics_by_hand():
  assert analyze.jaccard(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == pytest.approx(1 / 3)
  assert analyze.chance_jaccard(0.5, 0.5) == pytest.approx(1 / 3)
  rng = np.random.default_rng(0)
  a, b = rng.random(200000) < 0.7, rng.random(200000) < 0.2
  assert analyze.jaccard(a, b) == pytest.approx(analyze.chance_jaccard(0.7, 0.2), abs=0.005)
  frozen = np.zeros((3, 3, 2, 4), bool)
  frozen[..., 1] = frozen[..., 3] = True
  frozen[0, 0, 0, 0] = True
  assert analyze.unit_frozen_share(frozen) == 0.5
  np.testing.assert_allclose(analyze.input_profile(frozen)[:2], [0.75, 0.5])


def test_analyze_two_seeds_agrees_with_the_runs_own_sparsity(fewshot_runs, tmp_path):
  out = subprocess.run([sys.executable, '-m', 'wtl_tf.analyze', *fewshot_runs, f'--output_dir={tmp_path}'],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert '| conv1/kernel |' in out.stdout and out.stderr.strip() == ''
  result = json.load(open(tmp_path / 'analysis.json', encoding='utf-8'))
  assert (tmp_path / 'analysis.png').stat().st_size > 10000 and (tmp_path / 'analysis.md').exists()
  for i, run_dir in enumerate(fewshot_runs):
    with open(os.path.join(run_dir, 'results.json'), encoding='utf-8') as f:
      reported = json.load(f)['sparsity']  # The run's own report, at the same (best) checkpoint.
    for group, row in result['groups'].items():
      assert row['sparsity'][i] == pytest.approx(reported[group], abs=1e-9), group
    assert result['overall_sparsity'][i] == pytest.approx(reported['overall'], abs=1e-9)
  masks = [analyze.masks_of(d)['frozen'] for d in fewshot_runs]
  for group, row in result['groups'].items():
    assert row['jaccard'] == pytest.approx(analyze.jaccard(masks[0][group], masks[1][group]))
  same, _ = analyze.analyze([fewshot_runs[0]] * 2)  # A run against itself overlaps fully.
  assert all(row['jaccard'] == 1.0 for row in same['groups'].values())
  bad = subprocess.run([sys.executable, '-m', 'wtl_tf.analyze'], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert bad.returncode == 2 and 'name at least one run directory' in bad.stderr and 'Traceback' not in bad.stderr


def test_pairs_are_averaged():
  values = [np.array([1, 0], bool), np.array([1, 1], bool), np.array([0, 1], bool)]
  expected = np.mean([analyze.jaccard(a, b) for a, b in itertools.combinations(values, 2)])
  assert analyze._mean_over_pairs(values, analyze.jaccard) == pytest.approx(expected)  # pylint: disable=protected-access


def test_analyze_a_continual_run_matches_its_results(tiny_mnist, tmp_path):  # pylint: disable=redefined-outer-name
  run_dir = tmp_path / 'run'
  params = [f'Benchmark.raw_dir="{tiny_mnist}"', f'Benchmark.records_dir="{tmp_path}/records"',
            'Benchmark.num_tasks=2', 'Benchmark.samples_per_task=20', 'run_continual.show_progress=False',
            'sparse_la_maml/LaMAML.lr_m=3.0']  # A large mask rate, so that some masks close within 4 batches.
  out = subprocess.run([sys.executable, '-m', 'wtl_tf.main', '--gin_file=continual/rotations_sparse_la_maml.gin',
                        f'--workdir={run_dir}'] + [f'--gin_param={p}' for p in params], capture_output=True,
                       text=True, cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result, _ = analyze.analyze([str(run_dir)])
  with open(run_dir / 'results.json', encoding='utf-8') as f:
    reported = json.load(f)['sparsity']
  assert result['learner'] == 'sparse_la_maml' and result['setting'] == 'continual'
  for group, row in result['groups'].items():
    assert row['sparsity'][0] == pytest.approx(reported[group], abs=1e-9), group
  assert 0 < result['overall_sparsity'][0] == pytest.approx(reported['overall'], abs=1e-9)

"""Reproduces the paper's tables over seeds and prints mean ± std next to the paper's numbers (tools/paper.py).

  python tools/reproduce.py --setting=fewshot --rows=sparse_maml_conv4_miniimagenet_5w5s [--smoke] [--synthetic]
  python tools/reproduce.py --setting=continual --benchmark=rotations --learners=la_maml,sparse_la_maml
  python tools/reproduce.py --setting=online --p=0.98 --learners=c_maml,sparse_c_maml [--short]
      common: [--seeds=0,1,2,3,4] [--workdir=DIR] [--gin_file=FILE ...] [--gin_param='name=value' ...] [--list]
  python tools/reproduce.py --setting=continual --benchmark=permutations --learners=sparse_la_maml \
      --grid='sparse_la_maml/ScaledBinaryMask.step_size=0.05,0.1,0.2' --grid='sparse_la_maml/LaMAML.lr_m=0.03,0.1' \
      [--val_seeds=100,101]

Every (row or learner, seed) is one ordinary run, `python -m wtl_tf.main --gin_file=<row>.gin` plus the seed, in its
own process and run directory:
  fewshot    a row is a gin file under gin/fewshot/ (without .gin, e.g. `fig2/maml_conv4_miniimagenet_5w1s_k15`);
             runs in <workdir>/<row>/seed_<s>, the fixed evaluation episodes shared by all seeds (<workdir>/<row>/
             episodes). Tables 1-4. Full rows need an accelerator (a ConvNet sparse-MAML row is ~40k meta-updates
             with K = 35 on 84x84 images). `--smoke` shrinks any row to minutes on a CPU (gin/fewshot/smoke.gin and
             a 32-wide sparse-MAML+ generator); `--synthetic` swaps the datasets for synthetic ones of the same image
             shape, so no data is needed. Neither gives numbers to compare with the paper.
  continual  gin/continual/<benchmark>_<learner>.gin with run_continual.seed and Benchmark.seed set to the seed, in
             <workdir>/<benchmark>/<learner>/seed_<s>. Table 5 (RA, BTI); plot: sparsity.png (per-layer sparsity after
             each task, Figure-3 style, mean over seeds). `--smoke`: 2 tasks x 20 samples.
  online     gin/online/p<098|090>_<learner>.gin with run_online.seed set, in <workdir>/p<098|090>/<learner>/seed_<s>.
             Table 6 (cumulative accuracy); plot: cumulative.png (mean cumulative-accuracy curves). All runs share one
             pre-training cache (<workdir>/pretrained): a learner is pre-trained once (by its first seed) and the other
             seeds reuse it, as in OSAKA. `--short` adds gin/online/short.gin (T = 2000, at most 3 pre-training
             epochs); `--smoke` adds gin/online/smoke.gin (60 steps, a 1-epoch pre-training of 3 meta-batches).
`--smoke`, `--short` and `--synthetic` runs go to directories with that suffix (<row>_smoke, p098_short, ...), so
they never mix with full runs.

Tuning (`--grid`, one learner or row): every point of the grid (the product of the --grid value lists) runs on
the validation seeds (--val_seeds, which must be disjoint from --seeds), in <learner or row dir>/grid/<point>/seed_<s>.
For continual learning a validation seed is a benchmark seed (other angles or permutations), for online learning a
stream seed, for few-shot learning a training seed. The point with the best mean score on the validation seeds wins
(continual: RA; online: cumulative accuracy; few-shot: best validation accuracy; never sparsity, never a reporting
seed; the first point in grid order wins a tie). The reporting seeds then run with the winner's bindings in the usual
place. grid.md and grid.json (every point's per-seed scores and the winner) go to the grid directory, tuned.json
(the winning bindings) next to the reporting runs; a later, different winner is refused while runs made with the old
one exist. Without --grid, a learner or row with a tuned.json runs with its bindings, so the same sweep can be
resumed, extended by seeds or summarised with the other learners without repeating the grid flags.

Finished runs (a results.json that parses) are read back, not rerun, and interrupted ones resume from their last
checkpoint, so rerunning the same command continues a half-finished sweep; adding seeds or learners runs only those.
The summary (table.md: mean ± std with ddof 0, next to the paper; summary.json with the numbers) goes next to the
runs. Bad flags, rows or gin bindings are reported as one `error: ...` line (exit code 2) before any run starts.
"""
import glob
import itertools
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
if __name__ == '__main__':
  from wtl_tf import console  # pylint: disable=g-import-not-at-top,wrong-import-position
  console.quiet()  # Before anything imports TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

import paper  # pylint: disable=g-import-not-at-top,wrong-import-position  (tools/paper.py, next to this file)

GIN_DIR = os.path.join(ROOT, 'gin')
SETTINGS = ('fewshot', 'continual', 'online')
BENCHMARKS = ('rotations', 'permutations', 'many_permutations')
COLUMNS = {0.98: 'p098', 0.9: 'p090'}
DATASETS = ('omniglot', 'mnist', 'fashion_mnist')
DEFAULT_LEARNERS = {'continual': ['la_maml', 'sparse_la_maml'],
                    'online': ['c_maml', 'sparse_c_maml', 'sparse_relu_c_maml']}
DEFAULT_WORKDIRS = {'fewshot': 'runs/fewshot', 'continual': 'runs/table5', 'online': 'runs/table6'}
CONTINUAL_SMOKE = ['Benchmark.num_tasks = 2', 'Benchmark.samples_per_task = 20']

# Our own FlagValues, so that importing this module next to wtl_tf.main (which defines --gin_file, --gin_param and
# --workdir on absl's global FLAGS) is no clash.
FLAGS = flags.FlagValues()
flags.DEFINE_enum('setting', None, SETTINGS, 'Which paper setting (table) to reproduce.', flag_values=FLAGS)
flags.DEFINE_list('rows', [], 'fewshot: gin/fewshot rows (e.g. sparse_maml_conv4_miniimagenet_5w5s); see --list.',
                  flag_values=FLAGS)
flags.DEFINE_alias('row', 'rows', flag_values=FLAGS)
flags.DEFINE_enum('benchmark', 'rotations', BENCHMARKS, 'continual: the MNIST benchmark (Table 5).', flag_values=FLAGS)
flags.DEFINE_float('p', 0.98, 'online: the OSAKA column, 0.98 or 0.9 (Table 6).', flag_values=FLAGS)
flags.DEFINE_list('learners', None, 'continual/online: learners (default: continual la_maml,sparse_la_maml; online '
                  'c_maml,sparse_c_maml,sparse_relu_c_maml); see --list.', flag_values=FLAGS)
flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'], 'Seeds (paper: 5; 3 for the ResNet-12 rows).', flag_values=FLAGS)
flags.DEFINE_string('workdir', None, 'Sweep directory (default runs/fewshot, runs/table5 or runs/table6).',
                    flag_values=FLAGS)
flags.DEFINE_bool('smoke', False, 'Shrink every run to minutes on a CPU (not a result).', flag_values=FLAGS)
flags.DEFINE_bool('short', False, 'online: T = 2000 and at most 3 pre-training epochs (gin/online/short.gin).',
                  flag_values=FLAGS)
flags.DEFINE_bool('synthetic', False, 'fewshot: synthetic data of the same image shape (not a result).',
                  flag_values=FLAGS)
flags.DEFINE_multi_string('gin_file', [], 'Extra gin files for every run (after the row).', flag_values=FLAGS)
flags.DEFINE_multi_string('gin_param', [], 'Extra gin bindings for every run.', flag_values=FLAGS)
flags.DEFINE_multi_string('grid', [], "Tune: 'gin.binding=v1,v2,...' (repeat the flag for a product grid); values "
                          'are gin literals. See the module docstring.', flag_values=FLAGS)
flags.DEFINE_list('val_seeds', ['100', '101'], 'Validation seeds of --grid (disjoint from --seeds).',
                  flag_values=FLAGS)
flags.DEFINE_bool('list', False, 'List the rows (fewshot) or learners (continual, online) and exit.',
                  flag_values=FLAGS)


class UsageError(Exception):
  """A bad flag, row or gin binding: reported as one `error: ...` line, exit code 2, before any run."""


class RunFailed(Exception):
  """A run exited with an error (its own process printed why); rerunning the command resumes it."""


# Rows, run directories and gin files of each setting.


def fewshot_rows():
  paths = sorted(glob.glob(os.path.join(GIN_DIR, 'fewshot', '**', '*.gin'), recursive=True))
  layers = ('conv4_miniimagenet', 'resnet12_miniimagenet', 'conv4_omniglot', 'cross_domain')
  return [os.path.relpath(p, os.path.join(GIN_DIR, 'fewshot'))[:-4] for p in paths
          if '_' in os.path.basename(p) and os.sep + 'learners' + os.sep not in p
          and os.path.basename(p)[:-4] not in layers]


def learner_rows(setting, prefix):
  """Learners that have a row file gin/<setting>/<prefix>_<learner>.gin."""
  paths = glob.glob(os.path.join(GIN_DIR, setting, f'{prefix}_*.gin'))
  return sorted(os.path.basename(p)[len(prefix) + 1:-4] for p in paths)


def fewshot_gin(row):
  path = row if row.endswith('.gin') else os.path.join(GIN_DIR, 'fewshot', row + '.gin')
  if not os.path.exists(path):
    raise UsageError(f'no gin file for row {row!r} ({os.path.relpath(path, ROOT)}); see --setting=fewshot --list')
  return path


def synthetic_params(row):
  """Gin bindings that replace a few-shot row's datasets by synthetic ones of the same image shape."""
  from wtl_tf.data.fewshot import KNOWN_SHAPES  # pylint: disable=g-import-not-at-top
  name = os.path.basename(row)
  dataset = next((d for d in KNOWN_SHAPES if f'_{d}_' in name), None)
  if dataset is None:
    raise UsageError(f'--synthetic: cannot tell the dataset of row {row!r}')
  shape = KNOWN_SHAPES[dataset]
  params = ['run_fewshot.data = @SyntheticData()', f'SyntheticData.image_shape = {tuple(shape)}',
            f"SyntheticData.name = 'synthetic_{dataset}'"]
  if 'crossdomain' in name:
    params.append("run_fewshot.cross_domain = {'tieredimagenet': @tiered/SyntheticData(), "
                  "'cub': @cub/SyntheticData(), 'cars': @cars/SyntheticData()}")
    params += [f'{scope}/SyntheticData.seed = {i + 1}' for i, scope in enumerate(('tiered', 'cub', 'cars'))]
  return params


def suffix():
  return ''.join(f'_{name}' for name in ('smoke', 'short', 'synthetic') if FLAGS[name].value)


class Run:
  """One (row or learner, seed): its gin files and bindings and its run directory."""

  def __init__(self, label, name, seed, run_dir, gin_files, gin_params):
    self.label, self.name, self.seed, self.run_dir = label, name, seed, run_dir
    self.gin_files, self.gin_params = gin_files, gin_params

  @property
  def results_path(self):
    return os.path.join(self.run_dir, 'results.json')

  def finished_results(self):
    try:
      with open(self.results_path, encoding='utf-8') as f:
        return json.load(f)
    except (OSError, ValueError):
      return None


def plan(setting, seeds, workdir):
  """{group directory: [Run]}: what the flags ask for, every gin file checked to exist."""
  extra_files = [os.path.abspath(f) if os.path.exists(f) else f for f in FLAGS.gin_file]
  groups = {}
  if setting == 'fewshot':
    if not FLAGS.rows:
      raise UsageError('--setting=fewshot needs --rows (see --setting=fewshot --list)')
    for row in FLAGS.rows:
      files = [fewshot_gin(row)] + ([os.path.join(GIN_DIR, 'fewshot', 'smoke.gin')] if FLAGS.smoke else [])
      row_dir = os.path.join(workdir, row + suffix())
      common = [f"run_fewshot.episodes_dir = '{os.path.join(row_dir, 'episodes')}'",
                'run_fewshot.show_progress = False']
      common += ['NoisyBinaryMask.hidden_size = 32'] if FLAGS.smoke else []
      common += synthetic_params(row) if FLAGS.synthetic else []
      groups[row_dir] = [Run(row + suffix(), row, s, os.path.join(row_dir, f'seed_{s}'), files + extra_files,
                             [f'run_fewshot.seed = {s}'] + common + FLAGS.gin_param) for s in seeds]
    return groups
  if setting == 'continual':
    prefix, base = FLAGS.benchmark, os.path.join(workdir, FLAGS.benchmark + suffix())
    seed_params = lambda s: [f'run_continual.seed = {s}', f'Benchmark.seed = {s}', 'run_continual.show_progress = False']
    files = []
    smoke = CONTINUAL_SMOKE if FLAGS.smoke else []
  else:
    prefix = COLUMNS[FLAGS.p]
    base = os.path.join(workdir, prefix + suffix())
    cache = os.path.join(workdir, 'pretrained')
    seed_params = lambda s: [f'run_online.seed = {s}', 'run_online.show_progress = False',
                             f"run_online.pretrain_cache = '{cache}'"]
    files = [os.path.join(GIN_DIR, 'online', f'{name}.gin') for name, on in (('short', FLAGS.short),
                                                                               ('smoke', FLAGS.smoke)) if on]
    smoke = []
  learners = FLAGS.learners or DEFAULT_LEARNERS[setting]
  runs = []
  for learner in learners:
    row = os.path.join(GIN_DIR, setting, f'{prefix}_{learner}.gin')
    if not os.path.exists(row):
      raise UsageError(f'no gin file gin/{setting}/{prefix}_{learner}.gin (learners: '
                       f'{",".join(learner_rows(setting, prefix))})')
    runs += [Run(f'{prefix}{suffix()} {learner}', learner, s, os.path.join(base, learner, f'seed_{s}'),
                 [row] + files + extra_files, seed_params(s) + smoke + FLAGS.gin_param) for s in seeds]
  groups[base] = runs
  return groups


def check_gin(runs):
  """Parses every distinct configuration in this process, so a bad binding stops the sweep before any work."""
  import gin  # pylint: disable=g-import-not-at-top
  from wtl_tf import main as wtl_main  # pylint: disable=g-import-not-at-top
  seen = set()
  for run in runs:
    key = (tuple(run.gin_files), tuple(p for p in run.gin_params if '.seed' not in p))
    if key in seen:
      continue
    seen.add(key)
    gin.clear_config()
    try:
      wtl_main.parse_config(run.gin_files, run.gin_params)
    except wtl_main.ConfigError as e:
      raise UsageError(f'{run.label}: {e}') from None
    finally:
      gin.clear_config()


def execute(run):
  """Runs (or resumes) one run unless it is finished; returns its results.json."""
  result = run.finished_results()
  if result is not None:
    return result
  cmd = [sys.executable, '-m', 'wtl_tf.main', f'--workdir={run.run_dir}'] + [
      f'--gin_file={f}' for f in run.gin_files] + [f'--gin_param={p}' for p in run.gin_params]
  print(f'[{run.label} seed {run.seed}] ' + ' '.join(cmd[1:]), flush=True)
  proc = subprocess.run(cmd, cwd=ROOT, check=False)
  result = run.finished_results()
  if proc.returncode or result is None:
    raise RunFailed(f'{run.label} seed {run.seed} failed (exit code {proc.returncode}, run directory {run.run_dir}); '
                    'rerun the same command to resume')
  return result


# Tuning (--grid).

SCORES = {'fewshot': ('best_val_accuracy', 'best validation accuracy'), 'continual': ('ra', 'RA'),
          'online': ('cumulative_accuracy', 'cumulative accuracy')}


def split_values(text):
  """'0.1,(1, 2),"a,b"' -> ['0.1', '(1, 2)', '"a,b"']: commas inside brackets or quotes do not split."""
  values, depth, quote, start = [], 0, None, 0
  for i, ch in enumerate(text):
    if quote:
      quote = None if ch == quote else quote
    elif ch in '\'"':
      quote = ch
    elif ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == ',' and depth == 0:
      values.append(text[start:i].strip())
      start = i + 1
  values.append(text[start:].strip())
  return values


def parse_grid(specs):
  """[(binding name, [values])] from the --grid flags."""
  grid = []
  for spec in specs:
    name, sep, values = spec.partition('=')
    name, values = name.strip(), split_values(values)
    if not sep or '.' not in name or not all(values):
      raise UsageError(f"--grid must look like 'Scope/Class.param=v1,v2,...', got {spec!r}")
    if name in [n for n, _ in grid]:
      raise UsageError(f'--grid names {name} twice')
    grid.append((name, values))
  return grid


def grid_points(grid):
  """Every combination of the grid's values, as lists of gin bindings, in grid order."""
  names = [n for n, _ in grid]
  return [[f'{n} = {v}' for n, v in zip(names, combo)] for combo in itertools.product(*[v for _, v in grid])]


def point_label(bindings):
  """A directory name for a grid point: its bindings without scopes, e.g. `ScaledBinaryMask.step_size=0.1,...`."""
  parts = [b.split('/')[-1].replace(' ', '') for b in bindings]
  return ''.join(c if c.isalnum() or c in '._=,-+' else '_' for c in ','.join(parts))


def with_bindings(run, seed_run, run_dir, bindings):
  """A copy of `seed_run` (same learner, another seed) in `run_dir`, with `bindings` after its own."""
  return Run(run.label, run.name, seed_run.seed, run_dir, seed_run.gin_files, seed_run.gin_params + bindings)


def grid_runs(runs, val_runs):
  """{point label: (bindings, [Run on each validation seed])} for the learner or row of `runs`."""
  grid_dir = os.path.join(os.path.dirname(runs[0].run_dir), 'grid')
  return {point_label(b): (b, [with_bindings(runs[0], v, os.path.join(grid_dir, point_label(b), f'seed_{v.seed}'), b)
                               for v in val_runs]) for b in grid_points(parse_grid(FLAGS.grid))}


def tune(runs, points):
  """Runs the grid on the validation seeds, records it, and returns `runs` with the winning bindings added."""
  key, score_name = SCORES[FLAGS.setting]
  learner_dir = os.path.dirname(runs[0].run_dir)
  table = []
  for label, (bindings, val_runs) in points.items():
    scores = [100 * float(execute(run)[key]) for run in val_runs]
    table.append({'point': label, 'bindings': bindings, 'seeds': [r.seed for r in val_runs], 'scores': scores,
                  'mean': float(np.mean(scores))})
  best = max(table, key=lambda row: row['mean'])  # max keeps the first of equal means.
  lines = [f'{runs[0].label}: grid on validation seeds {",".join(map(str, best["seeds"]))}, scored by '
           f'{score_name} (%, mean over the seeds); winner in bold', '',
           '| point | ' + ' | '.join(f'seed {s}' for s in best['seeds']) + ' | mean |',
           '|---|' + '---|' * (len(best['seeds']) + 1)]
  for row in table:
    # The full bindings: the directory label drops scopes (theta/adam and mask/adam would read alike).
    cells = ['; '.join(b.replace(' ', '') for b in row['bindings'])] + [f'{v:.2f}' for v in row['scores']] + [
        f'{row["mean"]:.2f}']
    lines.append('| ' + ' | '.join(f'**{c}**' if row is best else c for c in cells) + ' |')
  from wtl_tf import rundir  # pylint: disable=g-import-not-at-top
  grid_dir = rundir.RunDir(os.path.join(learner_dir, 'grid'))
  grid_dir.write_text_atomic('grid.md', '\n'.join(lines) + '\n')
  grid_dir.write_json_atomic('grid.json', {'score': key, 'points': table, 'winner': best['point']})
  print('\n'.join(lines))
  _check_tuned(learner_dir, runs, best['bindings'])
  print(f'{runs[0].label}: tuned on validation seeds: {"; ".join(best["bindings"])}')
  return [with_bindings(run, run, run.run_dir, best['bindings']) for run in runs]


def read_tuned(learner_dir):
  """The winning bindings a --grid left in `learner_dir`/tuned.json, or None."""
  try:
    with open(os.path.join(learner_dir, 'tuned.json'), encoding='utf-8') as f:
      return json.load(f)['bindings']
  except (OSError, ValueError, KeyError):
    return None


def with_tuned(runs):
  """`runs` with their learner's tuned bindings where a --grid chose some; a --gin_param naming one is refused."""
  out, name = [], lambda binding: binding.partition('=')[0].strip()
  for learner_dir in dict.fromkeys(os.path.dirname(run.run_dir) for run in runs):  # In plan order.
    mine = [run for run in runs if os.path.dirname(run.run_dir) == learner_dir]
    bindings = read_tuned(learner_dir)
    if bindings is None:
      out += mine
      continue
    clash = sorted({name(b) for b in bindings} & {name(p) for p in FLAGS.gin_param})
    if clash:
      raise UsageError(f'{mine[0].label}: --gin_param sets {", ".join(clash)}, which {learner_dir}/tuned.json '
                       'already fixes; tune again with --grid, or use another --workdir')
    print(f'{mine[0].label}: using the tuned bindings of {learner_dir}/tuned.json: {"; ".join(bindings)}', flush=True)
    out += [with_bindings(run, run, run.run_dir, bindings) for run in mine]
  return out


def _check_tuned(learner_dir, runs, bindings):
  """Writes tuned.json; refuses a new winner while reporting runs made with an older one exist."""
  from wtl_tf import rundir  # pylint: disable=g-import-not-at-top
  previous = read_tuned(learner_dir)
  started = [r.run_dir for r in runs if os.path.exists(r.run_dir)]
  if previous is not None and previous != bindings and started:
    raise UsageError(f'{learner_dir}: the reporting runs were made with {"; ".join(previous)}, the grid now picks '
                     f'{"; ".join(bindings)}; move {", ".join(started)} away to rerun them')
  if previous is None and started:
    raise UsageError(f'{learner_dir}: reporting runs without tuning exist ({", ".join(started)}); tune into another '
                     '--workdir or move them away')
  rundir.RunDir(learner_dir).write_json_atomic('tuned.json', {'bindings': bindings})


# Summaries.


def mean_std(values):
  """(mean, std) with ddof 0 over the values that are not None; NaNs when there are none."""
  values = np.asarray([v for v in values if v is not None], np.float64)
  return (float(values.mean()), float(values.std())) if len(values) else (float('nan'), float('nan'))


def fmt(pair, digits=2):
  if pair is None or pair[0] != pair[0]:  # Absent, or NaN: no run saw it.
    return '-'
  return f'{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}'


def summarize_fewshot(row, runs, results, row_dir):
  """{metric: (mean %, std %, n)}: test accuracy, overall sparsity, cross-domain accuracies; writes table.md."""
  metrics = {'test_accuracy': [r['test_accuracy'] for r in results],
             'sparsity': [r['sparsity']['overall'] for r in results]}
  for r in results:
    for dataset, acc in r.get('cross_domain', {}).items():
      metrics.setdefault(f'cross_domain/{dataset}', []).append(acc)
  summary = {k: (100 * float(np.mean(v)), 100 * float(np.std(v)), len(v)) for k, v in metrics.items()}
  reference = paper.fewshot(row)
  seeds = [run.seed for run in runs]
  lines = [f'{row}{suffix()}: {len(seeds)} seeds ({",".join(map(str, seeds))}); in %, mean ± std (ddof 0)', '',
           '| metric | ours | paper |', '|---|---|---|']
  lines += [f'| {metric} | {fmt((m, s))} | {fmt(reference.get(metric))} |' for metric, (m, s, _) in summary.items()]
  saved = {'row': row, 'seeds': seeds, 'smoke': FLAGS.smoke, 'synthetic': FLAGS.synthetic,
           'ours': {k: {'mean': m, 'std': s, 'n': n} for k, (m, s, n) in summary.items()},
           'paper': {k: {'mean': m, 'std': s} for k, (m, s) in reference.items()}}
  _write(row_dir, '\n'.join(lines), saved)
  return summary


def load_task_sparsity(run_dir):
  """Sparsity by parameter group after each task (the eval records of metrics.jsonl)."""
  rows = []
  with open(os.path.join(run_dir, 'metrics.jsonl'), encoding='utf-8') as f:
    for line in f:
      record = json.loads(line)
      if record['split'] == 'eval':
        rows.append((record['task'], record['sparsity']))
  rows = dict(rows)  # A resumed run may repeat a task's record; the last one wins.
  return [rows[t] for t in sorted(rows)]


def _by_learner(by_learner):
  """(learner, its (run, result) pairs, their seeds, their results) for each learner."""
  for learner, pairs in by_learner.items():
    yield learner, pairs, [run.seed for run, _ in pairs], [result for _, result in pairs]


def summarize_continual(by_learner, base):
  summary, curves = {}, {}
  for learner, pairs, seeds, results in _by_learner(by_learner):
    sparsity = [load_task_sparsity(run.run_dir) for run, _ in pairs]
    ra = np.array([100 * r['ra'] for r in results])
    bti = np.array([100 * r['bti'] for r in results])
    groups = [g for g in sparsity[0][0] if g != 'overall'] + ['overall']
    summary[learner] = {
        'ra': mean_std(ra), 'bti': mean_std(bti),
        'sparsity': mean_std([100 * r['sparsity']['overall'] for r in results]),
        'wall_seconds': float(np.mean([r['wall_seconds'] for r in results])), 'seeds': seeds,
        'ra_runs': ra.tolist(), 'bti_runs': bti.tolist(),
        'final_sparsity_by_group': {g: float(np.mean([100 * s[-1][g] for s in sparsity])) for g in groups}}
    curves[learner] = {g: list(np.mean([[step[g] for step in s] for s in sparsity], axis=0)) for g in groups}
  title = f'MNIST {FLAGS.benchmark}{suffix()}'
  lines = [f'{title}, {len(seeds)} seeds ({",".join(map(str, seeds))}); RA / BTI in %, mean ± std (ddof 0)', '',
           '| learner | RA (ours) | RA (paper) | BTI (ours) | BTI (paper) | sparsity % | s / run |',
           '|---|---|---|---|---|---|---|']
  for learner, s in summary.items():
    reference = paper.continual(FLAGS.benchmark, learner)
    lines.append(f'| {learner} | {fmt(s["ra"])} | {fmt(reference.get("ra"))} | {fmt(s["bti"])} | '
                 f'{fmt(reference.get("bti"))} | {s["sparsity"][0]:.1f} | {s["wall_seconds"]:.0f} |')
  lines += ['', 'Final sparsity by parameter group (%, mean over seeds):', '']
  for learner, s in summary.items():
    lines.append(f'- {learner}: ' + ', '.join(f'{g} {v:.1f}' for g, v in s['final_sparsity_by_group'].items()))
  _write(base, '\n'.join(lines), summary)
  from wtl_tf import plots  # pylint: disable=g-import-not-at-top
  num_tasks = len(next(iter(curves.values()))['overall'])
  plots.sparsity_over_time(curves, {l: list(range(1, num_tasks + 1)) for l in curves},
                           os.path.join(base, 'sparsity.png'), xlabel='tasks learned',
                           title=f'{title}: sparsity per layer after each task (mean of {len(seeds)} seeds)')
  print(f'wrote {base}/table.md, summary.json, sparsity.png')
  return summary


def summarize_online(by_learner, base):
  summary, curves = {}, {}
  for learner, pairs, seeds, results in _by_learner(by_learner):
    summary[learner] = {
        'cumulative': mean_std([100 * r['cumulative_accuracy'] for r in results]),
        'per_dataset': {d: mean_std([100 * r['per_dataset'][d] if r['per_dataset'][d] is not None else None
                                     for r in results]) for d in DATASETS},
        'sparsity': mean_std([100 * r['sparsity']['overall'] for r in results]),
        'steps_per_second': mean_std([r['stream_steps_per_second'] for r in results]),
        'stream_minutes': mean_std([r['wall_seconds'] / 60 for r in results]),
        'pretrain_epochs': mean_std([(r['pretraining'] or {}).get('epochs') for r in results]),
        'num_steps': results[0]['num_steps'], 'seeds': [r['seed'] for r in results],
        'cumulative_runs': [100 * r['cumulative_accuracy'] for r in results]}
    cumulative = []
    for run, _ in pairs:
      accuracy = np.load(os.path.join(run.run_dir, 'stream.npz'))['accuracy']
      cumulative.append(np.cumsum(accuracy) / np.arange(1, len(accuracy) + 1))
    curves[learner] = np.mean(cumulative, axis=0)
  steps = sorted({s['num_steps'] for s in summary.values()})
  lines = [f'OSAKA, p = {FLAGS.p}{suffix().replace("_", " ")}, T = {"/".join(map(str, steps))}, {len(seeds)} seeds '
           f'({",".join(map(str, seeds))}); cumulative accuracy in %, mean ± std (ddof 0). Paper: T = 10000, 5 seeds.',
           '', '| learner | ours | paper | Omniglot | MNIST | Fashion-MNIST | sparsity % | steps/s | pre-train epochs |',
           '|---|---|---|---|---|---|---|---|---|']
  for learner, s in summary.items():
    epochs = s['pretrain_epochs'][0]
    lines.append(f'| {learner} | {fmt(s["cumulative"], 1)} | {fmt(paper.online(FLAGS.p, learner), 1)} | '
                 + ' | '.join(fmt(s['per_dataset'][d], 1) for d in DATASETS)
                 + f' | {s["sparsity"][0]:.1f} | {s["steps_per_second"][0]:.2f} | '
                 + (f'{epochs:.0f} |' if epochs == epochs else '- |'))
  others = [k for k in paper.TABLE_6[FLAGS.p] if k not in summary]
  lines += ['', 'Paper rows not run here: ' + ', '.join(f'{k} {fmt(paper.online(FLAGS.p, k), 1)}' for k in others)]
  _write(base, '\n'.join(lines), summary)
  _plot_cumulative(curves, os.path.join(base, 'cumulative.png'),
                   f'OSAKA p = {FLAGS.p}: cumulative accuracy (mean of {len(seeds)} seeds)')
  print(f'wrote {base}/table.md, summary.json, cumulative.png')
  return summary


def _plot_cumulative(curves, path, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(8, 4))
  for learner, curve in curves.items():
    ax.plot(np.arange(1, len(curve) + 1), 100 * curve, label=learner)
  ax.set_xlabel('stream step')
  ax.set_ylabel('cumulative accuracy (%)')
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _write(directory, table, summary):
  from wtl_tf import rundir  # pylint: disable=g-import-not-at-top
  print(table)
  sweep = rundir.RunDir(directory)
  sweep.write_text_atomic('table.md', table + '\n')
  sweep.write_json_atomic('summary.json', summary)


# Flags and the sweep.


def _help_text():
  return __doc__ + '\nflags:\n' + FLAGS.get_help(include_special_flags=False)


def parse_flags(argv):
  """Parses argv (argv[0] is the program) into FLAGS; every problem becomes a UsageError."""
  if any(a in ('-h', '-?', '--help', '--helpshort', '--helpfull') for a in argv[1:]):
    print(_help_text())
    sys.exit(0)
  FLAGS.unparse_flags()
  try:
    rest = FLAGS(list(argv), known_only=True)
    if not flags.FLAGS.is_parsed() or len(rest) > 1:
      rest = flags.FLAGS(rest)  # absl's own flags (--verbosity, ...); an unknown flag is an error here.
  except flags.Error as e:
    raise UsageError(str(e)) from None
  if len(rest) > 1:
    raise UsageError(f'unexpected arguments: {" ".join(rest[1:])}')
  if FLAGS.setting is None:
    raise UsageError(f'--setting is required: one of {", ".join(SETTINGS)}')
  only = {'rows': 'fewshot', 'synthetic': 'fewshot', 'short': 'online', 'p': 'online', 'benchmark': 'continual',
          'learners': ('continual', 'online')}
  for name, settings in only.items():
    if FLAGS[name].present and FLAGS.setting not in settings:
      raise UsageError(f'--{name} does not apply to --setting={FLAGS.setting}')
  if FLAGS.p not in COLUMNS:
    raise UsageError(f'--p must be one of {", ".join(map(str, COLUMNS))} (Table 6), got {FLAGS.p}')
  seeds = _seed_list('seeds')
  for path in FLAGS.gin_file:
    if not os.path.exists(path) and not os.path.exists(os.path.join(GIN_DIR, path)):
      raise UsageError(f'Gin file not found: {path}')
  if FLAGS.grid:
    parse_grid(FLAGS.grid)
    validation_seeds(seeds)
    if len(FLAGS.rows if FLAGS.setting == 'fewshot' else FLAGS.learners or DEFAULT_LEARNERS[FLAGS.setting]) != 1:
      raise UsageError('--grid tunes one learner (--learners) or row (--rows) at a time')
  elif FLAGS['val_seeds'].present:
    raise UsageError('--val_seeds applies only with --grid')
  return seeds


def _seed_list(name):
  """The list flag --<name> as distinct ints; anything else is a UsageError naming the flag."""
  values = FLAGS[name].value
  try:
    seeds = [int(s) for s in values]
  except ValueError:
    raise UsageError(f'--{name} must be comma-separated integers, got {",".join(values)}') from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise UsageError(f'--{name} must be distinct integers, got {",".join(values)}')
  return seeds


def validation_seeds(seeds):
  """--val_seeds as ints, checked to be distinct and disjoint from the reporting seeds."""
  val = _seed_list('val_seeds')
  shared = sorted(set(val) & set(seeds))
  if shared:
    raise UsageError(f'--val_seeds and --seeds share {",".join(map(str, shared))}: tune on seeds you do not report')
  return val


def sweep(seeds):
  """Runs what the parsed flags ask for; returns {row or learner: summary}."""
  setting = FLAGS.setting
  if FLAGS.list:
    prefix = {'continual': FLAGS.benchmark, 'online': COLUMNS[FLAGS.p]}.get(setting)
    print('\n'.join(fewshot_rows() if setting == 'fewshot' else learner_rows(setting, prefix)))
    return None
  workdir = os.path.abspath(FLAGS.workdir or DEFAULT_WORKDIRS[setting])
  groups = plan(setting, seeds, workdir)
  points = {}
  if FLAGS.grid:
    (group_dir, runs), = groups.items()
    (_, val_runs), = plan(setting, validation_seeds(seeds), workdir).items()
    points = grid_runs(runs, val_runs)
  else:  # A learner tuned earlier keeps its winner, so rerunning without --grid resumes and summarises the same runs.
    groups = {group_dir: with_tuned(runs) for group_dir, runs in groups.items()}
  check_gin([run for runs in groups.values() for run in runs]
            + [run for _, val_runs in points.values() for run in val_runs])
  out = {}
  for group_dir, runs in groups.items():
    if points:
      runs = tune(runs, points)
    results = [(run, execute(run)) for run in runs]
    if setting == 'fewshot':
      out[runs[0].name] = summarize_fewshot(runs[0].name, runs, [r for _, r in results], group_dir)
      continue
    by_learner = {}
    for run, result in results:
      by_learner.setdefault(run.name, []).append((run, result))
    summarize = summarize_continual if setting == 'continual' else summarize_online
    out.update(summarize(by_learner, group_dir))
  return out


def _fail(message, code=2):
  print(f'error: {message}'.replace('\n', ' '), file=sys.stderr)
  sys.exit(code)


def main(argv=None):
  """Parses argv (without the program name; sys.argv[1:] by default), runs the sweep, returns its summaries."""
  argv = sys.argv[1:] if argv is None else list(argv)
  return _sweep_or_fail(lambda: sweep(parse_flags([sys.argv[0]] + argv)))


def _sweep_or_fail(run):
  """run(); a usage error exits 2 and a failed run exits 1, each with one line."""
  try:
    return run()
  except UsageError as e:
    _fail(e)
  except RunFailed as e:
    _fail(e, code=1)


def _app_main(argv):
  del argv  # Parsed by _app_flags.
  _sweep_or_fail(lambda: sweep(_SEEDS))


_SEEDS = []


def _app_flags(argv):
  try:
    _SEEDS[:] = parse_flags(argv)
  except UsageError as e:
    _fail(e)
  return argv[:1]


if __name__ == '__main__':
  app.run(_app_main, flags_parser=_app_flags)

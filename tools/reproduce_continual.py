"""Reproduces a Table-5 row (MNIST continual learning) over several seeds and prints mean ± std next to the paper.

  python tools/reproduce_continual.py --benchmark=rotations --learners=la_maml,sparse_la_maml --seeds=0,1,2,3,4 \
      --workdir=runs/table5 [--gin_param='la_maml/Relu.step_size=0.2' ...]

Every (learner, seed) is one ordinary run, `python -m wtl_tf.main --gin_file=gin/continual/<benchmark>_<learner>.gin`
with `run_continual.seed` and `Benchmark.seed` set to the seed, in <workdir>/<benchmark>/<learner>/seed_<seed>.
Finished runs are skipped and interrupted ones resume, so rerunning the command continues a half-finished sweep.
The summary (table.md, summary.json) and a Figure-3-style plot of per-layer sparsity over tasks (sparsity.png,
mean over seeds) go to <workdir>/<benchmark>/.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from wtl_tf import summaries  # pylint: disable=g-import-not-at-top,wrong-import-position

# Table 5 of the paper, RA / BTI in % as (mean, std) (ALGORITHMS.md section 6).
PAPER = {
    'rotations': {'baseline': ((53.38, 1.53), (-5.44, 1.70)), 'gem': ((67.38, 1.75), (-18.02, 1.99)),
                  'mer': ((77.42, 0.78), (-5.60, 0.70)), 'la_maml': ((77.42, 0.65), (-8.64, 0.40)),
                  'sparse_la_maml': ((77.77, 0.58), (-8.16, 0.61))},
    'permutations': {'baseline': ((55.42, 0.65), (-13.76, 1.19)), 'gem': ((55.42, 1.10), (-24.42, 1.10)),
                     'mer': ((73.46, 0.45), (-9.96, 0.45)), 'la_maml': ((74.34, 0.67), (-7.60, 0.51)),
                     'sparse_la_maml': ((76.88, 0.72), (-8.39, 0.63))},
    'many_permutations': {'baseline': ((32.62, 0.43), (-19.06, 0.86)), 'gem': ((32.14, 0.50), (-23.52, 0.87)),
                          'mer': ((47.40, 0.35), (-17.78, 0.39)), 'la_maml': ((48.46, 0.45), (-12.96, 0.07)),
                          'sparse_la_maml': ((50.81, 0.79), (-13.73, 0.73))},
}


def run_one(benchmark, learner, seed, run_dir, gin_params):
  results = os.path.join(run_dir, 'results.json')
  if not os.path.exists(results):
    cmd = [sys.executable, '-m', 'wtl_tf.main', f'--gin_file=gin/continual/{benchmark}_{learner}.gin',
           f'--workdir={run_dir}', f'--gin_param=run_continual.seed={seed}', f'--gin_param=Benchmark.seed={seed}',
           '--gin_param=run_continual.show_progress=False'] + [f'--gin_param={p}' for p in gin_params]
    print(f'[{benchmark} {learner} seed {seed}] ' + ' '.join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
  with open(results, encoding='utf-8') as f:
    return json.load(f)


def load_task_sparsity(run_dir):
  rows = []
  with open(os.path.join(run_dir, 'metrics.jsonl'), encoding='utf-8') as f:
    for line in f:
      record = json.loads(line)
      if record['split'] == 'eval':
        rows.append((record['task'], record['sparsity']))
  rows = dict(rows)  # A resumed run may repeat a task's record; the last one wins.
  return [rows[t] for t in sorted(rows)]


def fmt(mean_std):
  return f'{mean_std[0]:6.2f} ± {mean_std[1]:4.2f}'


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--benchmark', choices=sorted(PAPER), default='rotations')
  parser.add_argument('--learners', default='la_maml,sparse_la_maml')
  parser.add_argument('--seeds', default='0,1,2,3,4')
  parser.add_argument('--workdir', default='runs/table5')
  parser.add_argument('--gin_param', action='append', default=[], help='Extra gin bindings for every run.')
  args = parser.parse_args()
  learners = args.learners.split(',')
  seeds = [int(s) for s in args.seeds.split(',')]
  base = os.path.join(os.path.abspath(args.workdir), args.benchmark)
  summary, curves = {}, {}
  for learner in learners:
    if not os.path.exists(os.path.join(ROOT, 'gin', 'continual', f'{args.benchmark}_{learner}.gin')):
      sys.exit(f'error: no gin file gin/continual/{args.benchmark}_{learner}.gin')
    runs = []
    for seed in seeds:
      run_dir = os.path.join(base, learner, f'seed_{seed}')
      result = run_one(args.benchmark, learner, seed, run_dir, args.gin_param)
      runs.append((result, load_task_sparsity(run_dir)))
    ra = np.array([100 * r['ra'] for r, _ in runs])
    bti = np.array([100 * r['bti'] for r, _ in runs])
    spars = np.array([100 * r['sparsity']['overall'] for r, _ in runs])
    wall = np.array([r['wall_seconds'] for r, _ in runs])
    groups = [g for g in runs[0][1][0] if g != 'overall'] + ['overall']
    final_by_group = {g: float(np.mean([100 * s[-1][g] for _, s in runs])) for g in groups}
    summary[learner] = {'ra': (float(ra.mean()), float(ra.std())), 'bti': (float(bti.mean()), float(bti.std())),
                        'sparsity': (float(spars.mean()), float(spars.std())), 'wall_seconds': float(wall.mean()),
                        'seeds': seeds, 'ra_runs': ra.tolist(), 'bti_runs': bti.tolist(),
                        'final_sparsity_by_group': final_by_group}
    curves[learner] = {g: list(np.mean([[s[g] for s in sp] for _, sp in runs], axis=0)) for g in groups}
  lines = [f'MNIST {args.benchmark}, {len(seeds)} seeds ({args.seeds}); RA / BTI in %, mean ± std (ddof 0)', '',
           '| learner | RA (ours) | RA (paper) | BTI (ours) | BTI (paper) | sparsity % | s / run |',
           '|---|---|---|---|---|---|---|']
  for learner, s in summary.items():
    paper = PAPER[args.benchmark].get(learner)
    lines.append(f'| {learner} | {fmt(s["ra"])} | {fmt(paper[0]) if paper else "-"} | {fmt(s["bti"])} | '
                 f'{fmt(paper[1]) if paper else "-"} | {s["sparsity"][0]:.1f} | {s["wall_seconds"]:.0f} |')
  lines += ['', 'Final sparsity by parameter group (%, mean over seeds):', '']
  for learner, s in summary.items():
    lines.append(f'- {learner}: ' + ', '.join(f'{g} {v:.1f}' for g, v in s['final_sparsity_by_group'].items()))
  table = '\n'.join(lines)
  summaries.write_sweep_summary(base, table, summary)
  from wtl_tf import plots  # pylint: disable=g-import-not-at-top
  num_tasks = len(next(iter(curves.values()))['overall'])
  plots.sparsity_over_time(curves, {l: list(range(1, num_tasks + 1)) for l in curves},
                           os.path.join(base, 'sparsity.png'), xlabel='tasks learned',
                           title=f'MNIST {args.benchmark}: sparsity per layer after each task (mean of {len(seeds)} seeds)')
  print(f'wrote {base}/table.md, summary.json, sparsity.png')


if __name__ == '__main__':
  main()

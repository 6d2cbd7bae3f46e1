"""Reproduces a Table-6 column (OSAKA online learning, p = 0.98 or 0.9) over seeds, mean ± std next to the paper.

  python tools/reproduce_online.py --p=0.98 --learners=c_maml,sparse_c_maml,sparse_relu_c_maml --seeds=0,1,2,3,4 \
      --workdir=runs/table6 [--short] [--gin_file=...] [--gin_param='run_online.num_steps=2000' ...]

Every (learner, seed) is one ordinary run, `python -m wtl_tf.main --gin_file=gin/online/p<098|090>_<learner>.gin`
with `run_online.seed` set, in <workdir>/p<098|090>/<learner>/seed_<seed>. All runs of a column share one pre-training
cache (<workdir>/pretrained): a learner is pre-trained once (by its first seed) and the other seeds reuse it, as in
OSAKA. Finished runs are skipped and interrupted ones resume, so rerunning the command continues a half-finished
sweep. `--short` adds gin/online/short.gin (T = 2000, at most 3 pre-training epochs).

The summary (table.md, summary.json) and the mean cumulative-accuracy curves (cumulative.png) go to
<workdir>/p<098|090>/. Learners: c_maml, sparse_c_maml, sparse_relu_c_maml, maml, anil, fine_tuning, online_adam.
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

# Table 6 of the paper: cumulative accuracy in %, (mean, std) at p = 0.98 and p = 0.9 (ALGORITHMS.md section 6).
PAPER = {
    0.98: {'online_adam': (73.9, 2.2), 'fine_tuning': (72.7, 1.7), 'maml': (84.5, 1.7), 'anil': (75.3, 2.0),
           'bgd': (87.8, 1.3), 'metacog': (88.0, 1.0), 'metabgd': (91.1, 2.6), 'c_maml': (92.8, 0.6),
           'sparse_c_maml': (94.2, 0.4), 'sparse_relu_c_maml': (93.5, 0.5)},
    0.9: {'online_adam': (23.8, 1.2), 'fine_tuning': (22.1, 1.1), 'maml': (75.5, 0.7), 'anil': (69.1, 0.8),
          'bgd': (63.4, 0.9), 'metacog': (63.6, 0.9), 'metabgd': (74.8, 1.1), 'c_maml': (83.3, 0.4),
          'sparse_c_maml': (86.3, 0.4), 'sparse_relu_c_maml': (86.1, 0.2)},
}
COLUMNS = {0.98: 'p098', 0.9: 'p090'}
DATASETS = ('omniglot', 'mnist', 'fashion_mnist')


def run_one(column, learner, seed, run_dir, cache, gin_files, gin_params):
  results = os.path.join(run_dir, 'results.json')
  if not os.path.exists(results):
    cmd = [sys.executable, '-m', 'wtl_tf.main', f'--gin_file=gin/online/{column}_{learner}.gin']
    cmd += [f'--gin_file={f}' for f in gin_files]
    cmd += [f'--workdir={run_dir}', f'--gin_param=run_online.seed={seed}', '--gin_param=run_online.show_progress=False',
            f"--gin_param=run_online.pretrain_cache='{cache}'"] + [f'--gin_param={p}' for p in gin_params]
    print(f'[{column} {learner} seed {seed}] ' + ' '.join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
  with open(results, encoding='utf-8') as f:
    return json.load(f)


def mean_std(values):
  values = np.asarray([v for v in values if v is not None], np.float64)
  return (float(values.mean()), float(values.std())) if len(values) else (float('nan'), float('nan'))


def fmt(pair, digits=1):
  if pair[0] != pair[0]:  # NaN: no run saw that dataset.
    return '-'
  return f'{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}'


def summarize(results):
  """Mean ± std (ddof 0, in %) of a learner's runs."""
  out = {'cumulative': mean_std([100 * r['cumulative_accuracy'] for r in results]),
         'per_dataset': {d: mean_std([100 * r['per_dataset'][d] if r['per_dataset'][d] is not None else None
                                      for r in results]) for d in DATASETS},
         'sparsity': mean_std([100 * r['sparsity']['overall'] for r in results]),
         'steps_per_second': mean_std([r['stream_steps_per_second'] for r in results]),
         'stream_minutes': mean_std([r['wall_seconds'] / 60 for r in results]),
         'pretrain_epochs': mean_std([(r['pretraining'] or {}).get('epochs') for r in results]),
         'num_steps': results[0]['num_steps'], 'seeds': [r['seed'] for r in results],
         'cumulative_runs': [100 * r['cumulative_accuracy'] for r in results]}
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--p', type=float, choices=sorted(COLUMNS), default=0.98)
  parser.add_argument('--learners', default='c_maml,sparse_c_maml,sparse_relu_c_maml')
  parser.add_argument('--seeds', default='0,1,2,3,4')
  parser.add_argument('--workdir', default='runs/table6')
  parser.add_argument('--short', action='store_true', help='T = 2000 and at most 3 pre-training epochs.')
  parser.add_argument('--gin_file', action='append', default=[], help='Extra gin files for every run.')
  parser.add_argument('--gin_param', action='append', default=[], help='Extra gin bindings for every run.')
  args = parser.parse_args(argv)
  column = COLUMNS[args.p]
  learners = args.learners.split(',')
  seeds = [int(s) for s in args.seeds.split(',')]
  gin_files = (['gin/online/short.gin'] if args.short else []) + args.gin_file
  base = os.path.join(os.path.abspath(args.workdir), column)
  cache = os.path.join(os.path.abspath(args.workdir), 'pretrained')
  for learner in learners:
    if not os.path.exists(os.path.join(ROOT, 'gin', 'online', f'{column}_{learner}.gin')):
      sys.exit(f'error: no gin file gin/online/{column}_{learner}.gin')
  summary, curves = {}, {}
  for learner in learners:
    results = []
    for seed in seeds:
      run_dir = os.path.join(base, learner, f'seed_{seed}')
      results.append(run_one(column, learner, seed, run_dir, cache, gin_files, args.gin_param))
    summary[learner] = summarize(results)
    cumulative = []
    for seed in seeds:
      accuracy = np.load(os.path.join(base, learner, f'seed_{seed}', 'stream.npz'))['accuracy']
      cumulative.append(np.cumsum(accuracy) / np.arange(1, len(accuracy) + 1))
    curves[learner] = np.mean(cumulative, axis=0)
  steps = {s['num_steps'] for s in summary.values()}
  lines = [f'OSAKA, p = {args.p}, T = {"/".join(map(str, sorted(steps)))}, {len(seeds)} seeds ({args.seeds}); '
           f'cumulative accuracy in %, mean ± std (ddof 0). Paper: T = 10000, 5 seeds.', '',
           '| learner | ours | paper | Omniglot | MNIST | Fashion-MNIST | sparsity % | steps/s | pre-train epochs |',
           '|---|---|---|---|---|---|---|---|---|']
  for learner, s in summary.items():
    paper = PAPER[args.p].get(learner)
    lines.append(f'| {learner} | {fmt(s["cumulative"])} | {fmt(paper) if paper else "-"} | '
                 + ' | '.join(fmt(s['per_dataset'][d]) for d in DATASETS)
                 + f' | {s["sparsity"][0]:.1f} | {s["steps_per_second"][0]:.2f} | {s["pretrain_epochs"][0]:.0f} |')
  others = [k for k in PAPER[args.p] if k not in summary]
  lines += ['', 'Paper rows not run here: ' + ', '.join(f'{k} {fmt(PAPER[args.p][k])}' for k in others)]
  table = '\n'.join(lines)
  summaries.write_sweep_summary(base, table, summary)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(8, 4))
  for learner, curve in curves.items():
    ax.plot(np.arange(1, len(curve) + 1), 100 * curve, label=learner)
  ax.set_xlabel('stream step')
  ax.set_ylabel('cumulative accuracy (%)')
  ax.set_title(f'OSAKA p = {args.p}: cumulative accuracy (mean of {len(seeds)} seeds)')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(base, 'cumulative.png'), dpi=110)
  plt.close(fig)
  print(f'wrote {base}/table.md, summary.json, cumulative.png')
  return summary


if __name__ == '__main__':
  main()

"""Reproduces one few-shot table row over several seeds and prints mean +- std next to the paper's values.

  python tools/reproduce_fewshot.py --row=sparse_maml_conv4_miniimagenet_5w5s [--seeds=0,1,2,3,4]
      [--workdir=runs/fewshot] [--smoke] [--synthetic] [--gin_param='name=value' ...] [--list]

A row is a gin file under gin/fewshot/ (without .gin, e.g. `fig2/maml_conv4_miniimagenet_5w1s_k15`). Each seed runs
`python -m wtl_tf.main` in its own process, in <workdir>/<row>/seed_<s>. Rerunning the same command resumes a
half-finished sweep: finished seeds are read back, an interrupted seed continues from its last checkpoint. The fixed
evaluation episodes are shared by all seeds (<workdir>/<row>/episodes). The summary (mean and population std over
the seeds, in %) is printed and written to <workdir>/<row>/summary.json.

Full rows need an accelerator (a ConvNet sparse-MAML row is ~40k meta-updates with K = 35 on 84x84 images).
`--smoke` shrinks any row to a few minutes on a CPU (gin/fewshot/smoke.gin: K = 2, 2 epochs of 3 updates, a few
evaluation episodes, and a 32-wide sparse-MAML+ generator); `--synthetic` swaps the datasets for synthetic ones of
the same image shape, so no data is needed. Neither gives numbers to compare with the paper.
"""
import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(ROOT, 'gin', 'fewshot')
sys.path.insert(0, ROOT)

# ALGORITHMS.md section 6, in %: {row: {metric: (mean, std)}}. Table 1 (ConvNet), 2 (ResNet-12), 3 (sparsity) and 4
# (cross-domain; trained as the Table 1 row).
_T1 = {'maml': ((48.07, 1.75), (63.15, 0.91)), 'anil': ((46.70, 0.40), (61.50, 0.50)),
       'boil': ((49.61, 0.16), (66.45, 0.37)), 'meta_sgd': ((50.47, 1.87), (64.03, 0.94)),
       'exp_maml': ((48.38, 0.45), (65.21, 0.62)), 'sparse_relu_maml': ((49.84, 0.49), (66.80, 0.43)),
       'sparse_maml': ((50.35, 0.39), (67.03, 0.74)), 'sparse_maml_plus': ((51.04, 0.59), (68.05, 0.84))}
_T2 = {'maml': ((53.91, 0.61), (69.36, 1.23)), 'anil': ((55.25, 0.33), (70.03, 0.58)),
       'boil': (None, (70.50, 0.28)), 'sparse_maml': ((55.02, 0.46), (70.02, 1.12)),
       'sparse_relu_maml': ((56.39, 0.38), (73.01, 0.24))}
_T3 = {'sparse_relu_maml': ((77.53, 0.73), (73.53, 0.85)), 'sparse_maml': ((79.04, 1.61), (74.98, 0.10)),
       'sparse_maml_plus': ((78.05, 1.67), (76.66, 1.13))}
_T4 = {'maml': (((51.61, .20), (40.51, .08), (33.57, .14)), ((65.76, .27), (53.09, .16), (44.56, .21))),
       'anil': (((52.82, .29), (41.12, .15), (34.77, .31)), ((66.52, .28), (55.82, .21), (46.55, .29))),
       'boil': (((53.23, .41), (44.20, .15), (36.12, .29)), ((69.37, .23), (60.92, .11), (50.64, .22))),
       'sparse_relu_maml': (((53.18, .52), (41.86, .95), (35.46, .67)), ((69.06, .28), (59.55, 1.23), (51.21, .89))),
       'sparse_maml': (((53.47, .53), (41.37, .73), (35.90, .50)), ((68.83, .65), (60.58, 1.10), (52.63, .56))),
       'sparse_maml_plus': (((53.91, .67), (43.43, 1.04), (37.14, .77)), ((69.92, .21), (62.02, .78), (53.18, .44)))}


def paper_values(row: str):
  """{metric: (mean, std)} the paper reports for a row (empty for rows it does not report)."""
  out = {}
  name = os.path.basename(row)
  for learner, (one, five) in _T1.items():
    for shots, value in ((1, one), (5, five)):
      base = f'{learner}_conv4_miniimagenet_5w{shots}s'
      if name in (base, base + '_crossdomain'):
        out['test_accuracy'] = value
        if learner in _T3:
          out['sparsity'] = _T3[learner][0 if shots == 1 else 1]
      if name == base + '_crossdomain' and learner in _T4:
        for dataset, v in zip(('tieredimagenet', 'cub', 'cars'), _T4[learner][0 if shots == 1 else 1]):
          out[f'cross_domain/{dataset}'] = v
  for learner, (one, five) in _T2.items():
    for shots, value in ((1, one), (5, five)):
      if name == f'{learner}_resnet12_miniimagenet_5w{shots}s' and value:
        out['test_accuracy'] = value
  return out


def gin_path(row: str) -> str:
  path = row if row.endswith('.gin') else os.path.join(GIN_DIR, row + '.gin')
  if not os.path.exists(path):
    raise SystemExit(f'no gin file for row {row!r} ({path}); see --list')
  return path


def list_rows():
  paths = sorted(glob.glob(os.path.join(GIN_DIR, '**', '*.gin'), recursive=True))
  return [os.path.relpath(p, GIN_DIR)[:-4] for p in paths if '_' in os.path.basename(p) and '/learners/' not in p
          and os.path.basename(p)[:-4] not in ('conv4_miniimagenet', 'resnet12_miniimagenet', 'conv4_omniglot',
                                               'cross_domain')]


def synthetic_params(row: str):
  """Gin bindings that replace the row's datasets by synthetic ones of the same image shape."""
  from wtl_tf.data.fewshot import KNOWN_SHAPES  # pylint: disable=g-import-not-at-top
  name = os.path.basename(row)
  dataset = next((d for d in KNOWN_SHAPES if f'_{d}_' in name), None)
  if dataset is None:
    raise SystemExit(f'--synthetic: cannot tell the dataset of row {row!r}')
  shape = KNOWN_SHAPES[dataset]
  params = ['run_fewshot.data = @SyntheticData()', f'SyntheticData.image_shape = {tuple(shape)}',
            f"SyntheticData.name = 'synthetic_{dataset}'"]
  if 'crossdomain' in name:
    params.append("run_fewshot.cross_domain = {'tieredimagenet': @tiered/SyntheticData(), "
                  "'cub': @cub/SyntheticData(), 'cars': @cars/SyntheticData()}")
    params += [f'{scope}/SyntheticData.seed = {i + 1}' for i, scope in enumerate(('tiered', 'cub', 'cars'))]
  return params


def run_seed(row, seed, run_dir, episodes_dir, smoke, synthetic, extra_params):
  """Runs (or resumes) one seed; returns its results.json."""
  result_path = os.path.join(run_dir, 'results.json')
  if os.path.exists(result_path):
    with open(result_path, encoding='utf-8') as f:
      return json.load(f)
  files = [gin_path(row)] + ([os.path.join(GIN_DIR, 'smoke.gin')] if smoke else [])
  params = [f'run_fewshot.seed = {seed}', f"run_fewshot.episodes_dir = '{episodes_dir}'"]
  if smoke:
    params.append('NoisyBinaryMask.hidden_size = 32')
  if synthetic:
    params += synthetic_params(row)
  params += list(extra_params)
  cmd = [sys.executable, '-m', 'wtl_tf.main', f'--workdir={run_dir}'] + [f'--gin_file={f}' for f in files] + [
      f'--gin_param={p}' for p in params]
  print(f'[{row} seed {seed}] ' + ' '.join(cmd[1:]), flush=True)
  proc = subprocess.run(cmd, cwd=ROOT, check=False)
  if proc.returncode:
    raise SystemExit(f'{row} seed {seed} failed (exit code {proc.returncode}); rerun the same command to resume')
  with open(result_path, encoding='utf-8') as f:
    return json.load(f)


def aggregate(results):
  """{metric: (mean %, std %, n)} over seeds: test accuracy, overall sparsity, cross-domain accuracies."""
  metrics = {'test_accuracy': [r['test_accuracy'] for r in results],
             'sparsity': [r['sparsity']['overall'] for r in results]}
  for r in results:
    for dataset, acc in r.get('cross_domain', {}).items():
      metrics.setdefault(f'cross_domain/{dataset}', []).append(acc)
  return {k: (100 * float(np.mean(v)), 100 * float(np.std(v)), len(v)) for k, v in metrics.items()}


def format_summary(row, summary, paper):
  lines = [f'{row}', f'{"metric":<28} {"ours (mean +- std, %)":>24} {"paper":>16}']
  for metric, (mean, std, n) in summary.items():
    ref = paper.get(metric)
    ref_text = f'{ref[0]:.2f} +- {ref[1]:.2f}' if ref else '-'
    lines.append(f'{metric:<28} {mean:>12.2f} +- {std:<5.2f} (n={n}) {ref_text:>16}')
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--row', help='gin/fewshot/<row>.gin, e.g. sparse_maml_conv4_miniimagenet_5w5s')
  parser.add_argument('--seeds', default='0,1,2,3,4', help='comma-separated seeds (paper: 5 ConvNet, 3 ResNet)')
  parser.add_argument('--workdir', default=os.path.join(ROOT, 'runs', 'fewshot'))
  parser.add_argument('--smoke', action='store_true', help='shrink the row to minutes on a CPU (not a result)')
  parser.add_argument('--synthetic', action='store_true', help='synthetic data of the same image shape')
  parser.add_argument('--gin_param', action='append', default=[], help='extra gin bindings for every seed')
  parser.add_argument('--list', action='store_true', help='list the rows')
  args = parser.parse_args(argv)
  if args.list:
    print('\n'.join(list_rows()))
    return None
  if not args.row:
    parser.error('--row is required (see --list)')
  gin_path(args.row)
  seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  tag = args.row + ('_smoke' if args.smoke else '') + ('_synthetic' if args.synthetic else '')
  row_dir = os.path.join(args.workdir, tag)
  results = [run_seed(args.row, seed, os.path.join(row_dir, f'seed_{seed}'), os.path.join(row_dir, 'episodes'),
                      args.smoke, args.synthetic, args.gin_param) for seed in seeds]
  summary = aggregate(results)
  paper = paper_values(args.row)
  text = format_summary(tag, summary, paper)
  print(text)
  os.makedirs(row_dir, exist_ok=True)
  with open(os.path.join(row_dir, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump({'row': args.row, 'seeds': seeds, 'smoke': args.smoke, 'synthetic': args.synthetic,
               'ours': {k: {'mean': m, 'std': s, 'n': n} for k, (m, s, n) in summary.items()},
               'paper': {k: {'mean': m, 'std': s} for k, (m, s) in paper.items()}}, f, indent=1)
  return summary


if __name__ == '__main__':
  main()

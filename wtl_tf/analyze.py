"""Where did the network learn to learn? Mask analysis of one or more runs (seeds of one row).

    python -m wtl_tf.analyze RUN_DIR [RUN_DIR ...] [--output_dir=DIR] [--checkpoint=best|last] [--learner=NAME]

For each run the learner is rebuilt and restored (wtl_tf/saved_run.py) and S(m) is read per parameter group; a
parameter is *frozen* when S(m) is exactly 0 (it never moves in the inner loop). Written to DIR (default
<parent of the first run>/analysis) and printed:

  * sparsity per group: the frozen share, per run and mean ± std over runs;
  * overlap across runs (two or more): per group, the Jaccard index |F_a & F_b| / |F_a | F_b| of the frozen sets,
    averaged over run pairs, next to chance, the expected Jaccard of independent random masks of the same
    sparsities, E ~ p_a p_b / (p_a + p_b - p_a p_b). Hidden units of different seeds are not aligned (any
    permutation of them is the same network), so overlap above chance can only come from what ties runs together:
    input positions (first layer), output classes (last layer), or structure shared by every unit;
  * input alignment: for each first-layer kernel, the frozen share of the weights leaving each input (pixel or
    input channel x position), correlated between runs (Pearson r, mean over pairs);
  * unit structure: per kernel, the share of output units (filters, neurons) whose weights are all frozen, next to
    the share that independent masks would give (p ** fan_in, about 0);
  * analysis.png: histograms of m per group (all runs pooled) and a per-group bar chart of sparsity;
  * analysis.json (every number above) and analysis.md (the tables).
"""
import itertools
import os
import sys
from typing import Dict, List, Optional, Sequence

if __name__ == '__main__':
  from wtl_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet()  # Before TensorFlow starts.

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from wtl_tf.errors import ConfigError  # pylint: disable=g-import-not-at-top,wrong-import-position


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
  """|a & b| / |a | b| of two boolean arrays (1 when both are empty)."""
  union = np.logical_or(a, b).sum()
  return float(np.logical_and(a, b).sum() / union) if union else 1.0


def chance_jaccard(p: float, q: float) -> float:
  """Expected Jaccard of independent random subsets of densities p and q (large groups)."""
  union = p + q - p * q
  return float(p * q / union) if union > 0 else 1.0


def unit_frozen_share(frozen: np.ndarray) -> float:
  """Share of output units (last axis) whose incoming weights are all frozen."""
  return float(frozen.reshape(-1, frozen.shape[-1]).all(axis=0).mean())


def input_profile(frozen: np.ndarray) -> np.ndarray:
  """Frozen share of the weights leaving each input: all axes but the last (output units) kept."""
  return frozen.reshape(-1, frozen.shape[-1]).mean(axis=1)


def _mean_over_pairs(values: List[np.ndarray], fn) -> Optional[float]:
  scores = [fn(a, b) for a, b in itertools.combinations(values, 2)]
  scores = [s for s in scores if s == s]
  return float(np.mean(scores)) if scores else None


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
  if a.std() == 0 or b.std() == 0:
    return float('nan')
  return float(np.corrcoef(a, b)[0, 1])


def masks_of(run_dir: str, checkpoint: str = 'best', learner_name: Optional[str] = None) -> Dict[str, object]:
  """{'frozen': {group: bool array}, 'm': {group: mask logits}, 'kernel': {group: is a kernel}, 'depth': ...}."""
  from wtl_tf import saved_run  # pylint: disable=g-import-not-at-top
  run = saved_run.load_run(run_dir, learner_name=learner_name, checkpoint=checkpoint)
  learner = run.learner
  modulations = learner.modulations()
  if not modulations:
    raise ConfigError(f'{run_dir}: learner {learner.name} has no mask parameters to analyse '
                      f'(modulation {learner.modulation})')
  infos = {info.name: info for info in learner.inner_infos}
  logits = learner.named_mask_logits()  # Plain logits are named after their group (not sparse-MAML+'s generator).
  return {'name': learner.name, 'setting': run.setting, 'checkpoint': run.checkpoint,
          'frozen': {g: np.asarray(s) == 0 for g, s in modulations.items()},
          'm': {g: np.asarray(logits[g]) for g in modulations if g in logits},
          'kernel': {g: infos[g].role == 'kernel' and len(infos[g].shape) >= 2 for g in modulations},
          'first': {g: infos[g].depth == 0 for g in modulations}}


def analyze(run_dirs: Sequence[str], checkpoint: str = 'best', learner_name: Optional[str] = None) -> Dict:
  """Every statistic of the module docstring, as a dict (see analysis.json)."""
  runs = [masks_of(d, checkpoint, learner_name) for d in run_dirs]
  groups = list(runs[0]['frozen'])
  for d, run in zip(run_dirs, runs[1:]):
    if list(run['frozen']) != groups or any(run['frozen'][g].shape != runs[0]['frozen'][g].shape for g in groups):
      raise ConfigError(f'{d} has other parameter groups than {run_dirs[0]}: analyse seeds of one row together')
  out = {'runs': list(run_dirs), 'learner': runs[0]['name'], 'setting': runs[0]['setting'],
         'checkpoints': [r['checkpoint'] for r in runs], 'groups': {}}
  sizes = {g: int(runs[0]['frozen'][g].size) for g in groups}
  for g in groups:
    frozen = [r['frozen'][g] for r in runs]
    sparsity = [float(f.mean()) for f in frozen]
    row = {'size': sizes[g], 'sparsity': sparsity, 'sparsity_mean': float(np.mean(sparsity)),
           'sparsity_std': float(np.std(sparsity))}
    if len(runs) > 1:
      row['jaccard'] = _mean_over_pairs(frozen, jaccard)
      row['jaccard_chance'] = _mean_over_pairs([np.array(s) for s in sparsity],
                                               lambda a, b: chance_jaccard(float(a), float(b)))
    if runs[0]['kernel'][g]:
      row['units_frozen'] = [unit_frozen_share(f) for f in frozen]
      fan_in = int(np.prod(frozen[0].shape[:-1]))
      row['units_frozen_chance'] = float(np.mean([s ** fan_in for s in sparsity]))
      if runs[0]['first'][g] and len(runs) > 1:
        row['input_profile_r'] = _mean_over_pairs([input_profile(f) for f in frozen], _pearson)
    out['groups'][g] = row
  total = sum(sizes.values())
  out['overall_sparsity'] = [float(sum(r['frozen'][g].sum() for g in groups) / total) for r in runs]
  return out, runs


def table(result: Dict) -> str:
  """The analysis as a markdown table (in %)."""
  several = len(result['runs']) > 1
  lines = [f'{result["learner"]} ({result["setting"]}), {len(result["runs"])} run(s), checkpoints '
           f'{", ".join(sorted(set(result["checkpoints"])))}; overall sparsity '
           + ', '.join(f'{100 * s:.1f}' for s in result['overall_sparsity']) + ' %', '',
           '| group | size | sparsity % (mean ± std) | ' + ('Jaccard % | chance % | ' if several else '')
           + 'units all frozen % | chance % |' + (' input-profile r |' if several else ''),
           '|---|---|---|' + ('---|---|' if several else '') + '---|---|' + ('---|' if several else '')]
  for g, row in result['groups'].items():
    cells = [g, str(row['size']), f'{100 * row["sparsity_mean"]:.1f} ± {100 * row["sparsity_std"]:.1f}']
    if several:
      cells += [f'{100 * row["jaccard"]:.1f}', f'{100 * row["jaccard_chance"]:.1f}']
    if 'units_frozen' in row:
      cells += [f'{100 * np.mean(row["units_frozen"]):.1f}', f'{100 * row["units_frozen_chance"]:.1f}']
    else:
      cells += ['-', '-']
    if several:
      r = row.get('input_profile_r')
      cells.append(f'{r:.2f}' if r is not None else '-')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def figure(result: Dict, runs: List[Dict], path: str):
  """Histograms of m per group (runs pooled) and per-group sparsity bars (mean ± std over runs)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  groups = list(result['groups'])
  hist_groups = [g for g in groups if g in runs[0]['m']]
  cols = 4
  rows = int(np.ceil(len(hist_groups) / cols)) + 1
  fig = plt.figure(figsize=(4 * cols, 2.6 * rows))
  bars = fig.add_subplot(rows, 1, 1)
  means = [100 * result['groups'][g]['sparsity_mean'] for g in groups]
  stds = [100 * result['groups'][g]['sparsity_std'] for g in groups]
  bars.bar(range(len(groups)), means, yerr=stds, color='tab:blue', label='frozen (S(m) = 0)')
  if len(runs) > 1:
    bars.plot(range(len(groups)), [100 * result['groups'][g]['jaccard'] for g in groups], 'o', color='tab:red',
              label='Jaccard across runs')
    bars.plot(range(len(groups)), [100 * result['groups'][g]['jaccard_chance'] for g in groups], 'x',
              color='black', label='Jaccard by chance')
  bars.set_xticks(range(len(groups)))
  bars.set_xticklabels(groups, rotation=45, ha='right', fontsize=7)
  bars.set_ylabel('%')
  bars.set_title(f'{result["learner"]}: sparsity per group ({len(runs)} run(s), input to output)')
  bars.legend(fontsize=7)
  for i, g in enumerate(hist_groups):
    ax = fig.add_subplot(rows, cols, cols + i + 1)
    ax.hist(np.concatenate([r['m'][g].ravel() for r in runs]), bins=50, color='tab:gray')
    ax.axvline(0, color='tab:red', lw=0.8)
    ax.set_title(f'm: {g}', fontsize=8)
    ax.tick_params(labelsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write(result: Dict, runs: List[Dict], output_dir: str):
  from wtl_tf import rundir  # pylint: disable=g-import-not-at-top
  out = rundir.RunDir(output_dir)
  out.write_json_atomic('analysis.json', result)
  out.write_text_atomic('analysis.md', table(result) + '\n')
  figure(result, runs, os.path.join(output_dir, 'analysis.png'))


def main(argv=None):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from wtl_tf import console, errors  # pylint: disable=g-import-not-at-top
  defs = flags.FlagValues()
  flags.DEFINE_string('output_dir', None, 'Where analysis.{json,md,png} go (default <parent of the first run>/'
                      'analysis).', flag_values=defs)
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'last'], 'best: few-shot best-validation weights, else last.',
                    flag_values=defs)
  flags.DEFINE_string('learner', None, 'For runs with several learners: which one.', flag_values=defs)

  def run():
    run_dirs = console.parse_command_line(defs, sys.argv if argv is None else ['analyze'] + list(argv), __doc__)
    if not run_dirs:
      raise ConfigError('name at least one run directory: python -m wtl_tf.analyze RUN_DIR [RUN_DIR ...]')
    result, runs = analyze(run_dirs, defs.checkpoint, defs.learner)
    output_dir = defs.output_dir or os.path.join(os.path.dirname(os.path.abspath(run_dirs[0])), 'analysis')
    write(result, runs, output_dir)
    print(table(result))
    print(f'wrote {output_dir}/analysis.json, analysis.md, analysis.png')
    return result
  return errors.report_user_errors(run)


if __name__ == '__main__':
  main()

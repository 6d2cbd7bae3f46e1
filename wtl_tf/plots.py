"""Figures people would rather look at than read: sparsity per parameter group over training, online accuracy."""
import os
from typing import Dict, List, Optional, Sequence

import matplotlib
import numpy as np

matplotlib.use('Agg')  # Files only; no display needed.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def _plot_groups(ax, x, curves: Dict[str, List[float]]):
  """Sparsity (%) of each group against x; 'overall' as a dashed black line."""
  for group, values in curves.items():
    style = dict(color='black', linestyle='--', linewidth=2) if group == 'overall' else {}
    ax.plot(x, [100.0 * v for v in values], label=group, **style)


def _save(fig, path: str) -> str:
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def sparsity_over_time(curves: Dict[str, Dict[str, List[float]]], x: Dict[str, List[float]], path: str,
                       xlabel: str = 'task', title: Optional[str] = None,
                       task_boundaries: Optional[Sequence[float]] = None):
  """One panel per learner: sparsity (%) of each group against x (Figure 3 of the paper).

  Args:
    curves: learner -> {group: [sparsity fraction at each x]} (include 'overall' for a dashed total line).
    x: learner -> x values.
  """
  names = list(curves)
  fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 3.6), squeeze=False, sharey=True)
  for ax, name in zip(axes[0], names):
    _plot_groups(ax, x[name], curves[name])
    for b in task_boundaries or ():
      ax.axvline(b, color='0.85', linewidth=0.6, zorder=0)
    ax.set_title(name)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel('sparsity (% of zero learning rates)')
  axes[0][-1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  if title:
    fig.suptitle(title)
  return _save(fig, path)


MODE_COLORS = ('tab:blue', 'tab:orange', 'tab:green')


def online_accuracy(accuracy: Sequence[float], modes: Sequence[int], switches: Sequence[bool],
                    detected: Sequence[bool], path: str, window: int = 100, title: Optional[str] = None,
                    mode_names: Sequence[str] = ('Omniglot', 'MNIST', 'Fashion-MNIST'),
                    sparsity_steps: Optional[Sequence[int]] = None,
                    sparsity: Optional[Dict[str, List[float]]] = None):
  """Online accuracy over the stream (running mean over `window` steps and cumulative mean), with each task drawn
  as a band coloured by its dataset and the true switches (below) and detected boundaries (above) as ticks.
  A second panel shows sparsity per group over time when `sparsity_steps` is given."""
  accuracy = np.asarray(accuracy, np.float64)
  steps = np.arange(1, len(accuracy) + 1)
  sums = np.concatenate([[0.0], np.cumsum(accuracy)])
  running = (sums[steps] - sums[np.maximum(steps - window, 0)]) / np.minimum(steps, window)  # Trailing mean.
  panels = 2 if sparsity_steps else 1
  fig, axes = plt.subplots(panels, 1, figsize=(11, 3.6 * panels), squeeze=False, sharex=True)
  ax = axes[0][0]
  starts = list(np.flatnonzero(np.asarray(switches))) + [len(accuracy)]
  if not starts or starts[0] != 0:
    starts = [0] + starts
  for a, b in zip(starts[:-1], starts[1:]):
    ax.axvspan(a + 0.5, b + 0.5, ymin=0.0, ymax=0.04, color=MODE_COLORS[int(modes[a]) % 3], linewidth=0)
  for s in np.flatnonzero(np.asarray(switches))[1:]:
    ax.axvline(s + 1, ymin=0.04, ymax=0.09, color='0.3', linewidth=0.5)
  for s in np.flatnonzero(np.asarray(detected)):
    ax.axvline(s + 1, ymin=0.91, ymax=1.0, color='tab:red', linewidth=0.5)
  ax.plot(steps, running, color='black', linewidth=1.0, label=f'accuracy (mean of the last {window} steps)')
  ax.plot(steps, np.cumsum(accuracy) / steps, color='tab:purple', linewidth=1.5, linestyle='--',
          label='cumulative accuracy')
  for m, name in enumerate(mode_names):
    ax.plot([], [], color=MODE_COLORS[m], linewidth=6, label=f'task from {name}')
  ax.plot([], [], color='0.3', linewidth=1, label='true task switch (bottom)')
  ax.plot([], [], color='tab:red', linewidth=1, label='detected boundary (top)')
  ax.set_ylim(0, 1.02)
  ax.set_ylabel('online accuracy (before learning)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  if title:
    ax.set_title(title)
  if sparsity_steps:
    ax2 = axes[1][0]
    _plot_groups(ax2, sparsity_steps, sparsity or {})
    ax2.set_ylabel('sparsity (% zero S(m))')
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  axes[-1][0].set_xlabel('stream step')
  return _save(fig, path)


def sparsity_trend(points: Dict[float, Dict[str, float]], path: str, xlabel: str, title: str,
                   log_x: bool = False) -> str:
  """Final sparsity (%) of each group and 'overall' against a setting (Figure 2 / Figure 3 style).

  Args:
    points: setting value -> {group: sparsity fraction} (one run per value, or a mean over runs).
  """
  xs = sorted(points)
  groups = [g for g in points[xs[0]] if g != 'overall'] + ['overall']
  fig, ax = plt.subplots(figsize=(7, 4))
  _plot_groups(ax, xs, {g: [points[x].get(g, float('nan')) for x in xs] for g in groups})
  if log_x:
    ax.set_xscale('log', base=2)
  ax.set_xticks(xs)
  ax.set_xticklabels([f'{x:g}' for x in xs])
  ax.set_xlabel(xlabel)
  ax.set_ylabel('sparsity (%)')
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6, ncol=2, loc='center left', bbox_to_anchor=(1.0, 0.5))
  return _save(fig, path)

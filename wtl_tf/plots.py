"""Figures people would rather look at than read: sparsity per parameter group over training."""
import os
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use('Agg')  # Files only; no display needed.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


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
    for group, values in curves[name].items():
      style = dict(color='black', linestyle='--', linewidth=2) if group == 'overall' else {}
      ax.plot(x[name], [100.0 * v for v in values], label=group, **style)
    for b in task_boundaries or ():
      ax.axvline(b, color='0.85', linewidth=0.6, zorder=0)
    ax.set_title(name)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel('sparsity (% of zero learning rates)')
  axes[0][-1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path

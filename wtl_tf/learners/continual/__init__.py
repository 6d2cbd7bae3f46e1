"""Continual learners: La-MAML and its modulated relatives, and the Table-5 baselines."""

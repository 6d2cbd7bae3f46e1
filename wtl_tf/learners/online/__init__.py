"""Online (OSAKA) learners: continual-MAML and its sparse variants, and the stream baselines."""

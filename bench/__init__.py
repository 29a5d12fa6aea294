"""cilia benchmarks: every scenario runs beside its baselines in the same run; results are ratios."""

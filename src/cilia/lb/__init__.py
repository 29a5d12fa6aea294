"""cilia.lb."""

"""cilia.policy."""

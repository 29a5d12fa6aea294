"""cilia.identity."""

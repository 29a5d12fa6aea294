"""cilia.cli."""

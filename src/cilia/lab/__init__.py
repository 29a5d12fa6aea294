"""cilia.lab."""

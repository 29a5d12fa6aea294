"""cilia.api."""

"""cilia.cni."""

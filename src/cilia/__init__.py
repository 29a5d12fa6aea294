"""cilia: eBPF-based container networking, network security and observability."""

__version__ = "0.1.0"

"""cilia.lb: Kubernetes Services -> the datapath's load-balancing maps. The engine is `manager.py`;
everything here is pure Python and reaches the maps only through its Protocol (docs/services.md)."""

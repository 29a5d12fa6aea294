"""Builds nothing at run time: loads the compiled datapath per endpoint and owns the shared maps.

`cilia.datapath.config` (the load-time configurations) is a pure codec and imports without
libbpf; the loader (`Datapath`, from `manager`) is imported when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cilia.datapath.config import EndpointConfig

if TYPE_CHECKING:
    from cilia.datapath.manager import Datapath, DatapathOptions, default_bpf_dir

__all__ = ["Datapath", "DatapathOptions", "EndpointConfig", "default_bpf_dir"]
_FROM_MANAGER = {"Datapath", "DatapathOptions", "default_bpf_dir"}


def __getattr__(name: str) -> Any:
    if name in _FROM_MANAGER:
        from cilia.datapath import manager

        return getattr(manager, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

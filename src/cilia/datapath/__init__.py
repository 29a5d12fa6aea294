"""Builds nothing at run time: loads the compiled datapath per endpoint and owns the shared maps."""

from cilia.datapath.config import EndpointConfig
from cilia.datapath.manager import Datapath, DatapathOptions, default_bpf_dir

__all__ = ["Datapath", "DatapathOptions", "EndpointConfig", "default_bpf_dir"]

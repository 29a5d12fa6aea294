"""The dependency rule for cilia.lb (docs/architecture.md): the engine and its parts import no
kernel layer, so none of bpf, maps or netlink (nor libbpf or pyroute2) is loaded by importing them."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import cilia.lb

FORBIDDEN = ("cilia.bpf", "cilia.maps", "cilia.netlink", "cilia.datapath", "pyroute2")


def test_lb_imports_no_kernel_layer() -> None:
    modules = [f"cilia.lb.{m.name}" for m in pkgutil.iter_modules(cilia.lb.__path__)]
    assert "cilia.lb.manager" in modules and "cilia.lb.reconcile" in modules
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(n for n in sys.modules if n.startswith({FORBIDDEN!r})))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"

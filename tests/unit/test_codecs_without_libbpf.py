"""Pure codecs import without libbpf: cilia.maps, the event decoder and the load-time config
codecs only annotate with the map handle, so a machine without libbpf.so (a CLI host, a unit
test runner) can still decode and encode. Run in a fresh interpreter where loading libbpf fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import ctypes
    import importlib
    import pkgutil
    import sys

    real_init = ctypes.CDLL.__init__

    def refuse_libbpf(self, name, *args, **kwargs):
        if name is not None and "bpf" in str(name):
            raise OSError(f"libbpf made unloadable for this test: {name}")
        real_init(self, name, *args, **kwargs)

    ctypes.CDLL.__init__ = refuse_libbpf

    import cilia.maps

    modules = [f"cilia.maps.{m.name}" for m in pkgutil.iter_modules(cilia.maps.__path__)]
    modules += ["cilia.monitor.events", "cilia.datapath.config"]
    for name in modules:
        importlib.import_module(name)
    assert "cilia.bpf.libbpf" not in sys.modules, "a codec module imported cilia.bpf.libbpf"
    print(len(modules))
""")


def test_every_codec_module_imports_without_libbpf() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 11  # addr ct direction endpoints events ipcache layout lb metrics policy + 2


def test_the_probe_notices_libbpf_being_loaded() -> None:
    """The probe itself can fail: importing the libbpf layer under it raises."""
    probe = PROBE.replace('modules += ["cilia.monitor.events"', 'modules += ["cilia.bpf", "cilia.monitor.events"')
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "libbpf made unloadable" in result.stderr

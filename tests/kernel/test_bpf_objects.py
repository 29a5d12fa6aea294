"""BpfObject.open against the kernel: a failed load leaves nothing pinned behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from cilia.bpf import BpfObject
from cilia.bpf.errors import BpfError
from cilia.datapath import default_bpf_dir


def test_failed_load_removes_the_pin_directory_it_created(pin_dir: Path) -> None:
    with pytest.raises(BpfError):  # a map of 0 entries: the kernel refuses to create it
        BpfObject.open(default_bpf_dir() / "bpf_lxc.o", pin_root=pin_dir, max_entries={"cilia_ct_tcp_v1": 0})
    assert not pin_dir.exists()


def test_failed_load_keeps_a_pin_directory_that_was_there(pin_dir: Path) -> None:
    pin_dir.mkdir()
    with pytest.raises(BpfError):
        BpfObject.open(default_bpf_dir() / "bpf_lxc.o", pin_root=pin_dir, max_entries={"cilia_ct_tcp_v1": 0})
    assert pin_dir.is_dir() and not any(pin_dir.iterdir())  # still there, and nothing pinned in it

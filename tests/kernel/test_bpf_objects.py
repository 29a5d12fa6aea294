"""BpfObject.open against the kernel: a failed load leaves nothing pinned behind."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cilia.bpf import BpfObject, ensure_bpffs, remove_pins
from cilia.bpf.errors import BpfError
from cilia.datapath import default_bpf_dir


def test_failed_load_removes_the_pin_directory_it_created() -> None:
    ensure_bpffs()
    pins = Path(f"/sys/fs/bpf/cilia-test-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(BpfError):  # a map of 0 entries: the kernel refuses to create it
            BpfObject.open(default_bpf_dir() / "bpf_lxc.o", pin_root=pins, max_entries={"cilia_ct_tcp_v1": 0})
        assert not pins.exists()
    finally:
        remove_pins(pins)


def test_failed_load_keeps_a_pin_directory_that_was_there(tmp_path: Path) -> None:
    ensure_bpffs()
    pins = Path(f"/sys/fs/bpf/cilia-test-{uuid.uuid4().hex[:8]}")
    pins.mkdir()
    try:
        with pytest.raises(BpfError):
            BpfObject.open(default_bpf_dir() / "bpf_lxc.o", pin_root=pins, max_entries={"cilia_ct_tcp_v1": 0})
        assert pins.is_dir() and not any(pins.iterdir())  # still there, and nothing pinned in it
    finally:
        remove_pins(pins)

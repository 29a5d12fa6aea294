"""The nat rules cilia owns in a node's network namespace, each concern in a chain of its own
jumped to from POSTROUTING: `CILIA_MASQ` (pods' traffic leaving the node masqueraded, except to
the native-routing CIDRs) and `CILIA_SVC_SNAT` (service connections forwarded to a backend on
another node, SNATed to the node's address).

`sync_chain` makes a chain hold exactly the rules asked for, in one atomic `iptables-restore
--noflush` (the chain declared, so flushed, and refilled in one commit: no moment without the
rules, and rules of an earlier configuration, e.g. another pod CIDR or node address, are gone);
the jump is added once. So every agent start re-creates them idempotently. `remove_all` removes
both chains and their jumps, and rules an older agent put into POSTROUTING itself (found by their
comment). The agent does not call it when it stops: the datapath, these rules included, keeps
forwarding while the agent is away (docs/architecture.md); `cilia-agent --cleanup` does, and the
lab before it removes a node.

Never run this in the root network namespace."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence

from cilia.netlink.links import NetlinkError

MASQ_CHAIN = "CILIA_MASQ"
SNAT_CHAIN = "CILIA_SVC_SNAT"
MASQ_COMMENT = "cilia-masq"
SNAT_COMMENT = "cilia-svc-snat"
CHAINS = ((MASQ_CHAIN, MASQ_COMMENT), (SNAT_CHAIN, SNAT_COMMENT))
TOOLS = {4: "iptables", 6: "ip6tables"}
_MAX_DUPLICATES = 16  # bounded loops when deleting a rule that may be there more than once

Rule = Sequence[str]  # a rule's match and target, as iptables arguments (without -A CHAIN)


def restore_text(chain: str, rules: Sequence[Rule]) -> str:
    """The iptables-restore input that makes `chain` of the nat table hold exactly `rules`."""
    lines = ["*nat", f":{chain} - [0:0]"]
    for rule in rules:
        if any(not arg or any(c.isspace() or c in "\"'" for c in arg) for arg in rule):
            raise ValueError(f"iptables-restore cannot take this rule unquoted: {rule}")
        lines.append(" ".join(["-A", chain, *rule]))  # iptables-restore has no shell quoting
    return "\n".join([*lines, "COMMIT", ""])


def jump_rule(chain: str, comment: str) -> list[str]:
    return ["POSTROUTING", "-m", "comment", "--comment", comment, "-j", chain]


def legacy_rules(listing: str) -> list[list[str]]:
    """The rules of `iptables -t nat -S POSTROUTING` output that an older agent added to
    POSTROUTING itself (cilia's comments, no jump to a cilia chain), as arguments for -D."""
    found = []
    for line in listing.splitlines():
        words = shlex.split(line)
        if words[:2] != ["-A", "POSTROUTING"] or "--comment" not in words:
            continue
        comment = words[words.index("--comment") + 1] if words.index("--comment") + 1 < len(words) else ""
        target = words[words.index("-j") + 1] if "-j" in words and words.index("-j") + 1 < len(words) else ""
        if comment in (MASQ_COMMENT, SNAT_COMMENT) and target not in (MASQ_CHAIN, SNAT_CHAIN):
            found.append(words[1:])
    return found


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "-w", "5", "-t", "nat", *args], capture_output=True, text=True, check=False)


def _remove_legacy(tool: str) -> None:
    listing = _run(tool, "-S", "POSTROUTING")
    if listing.returncode != 0:
        return
    for rule in legacy_rules(listing.stdout):
        _run(tool, "-D", *rule)


def sync_chain(version: int, chain: str, comment: str, rules: Sequence[Rule], *, first: bool = False) -> None:
    """Make `chain` hold exactly `rules` and POSTROUTING jump to it once (as its first rule with
    `first`); no rules: the chain and its jump are removed. NetlinkError when iptables refuses."""
    tool = TOOLS[version]
    _remove_legacy(tool)
    if not rules:
        _remove_chain(tool, chain, comment)
        return
    restored = subprocess.run([f"{tool}-restore", "-w", "5", "--noflush"], input=restore_text(chain, rules),
                              capture_output=True, text=True, check=False)
    if restored.returncode != 0:
        raise NetlinkError(f"writing the nat chain {chain} with {tool}-restore: {restored.stderr.strip()}")
    jump = jump_rule(chain, comment)
    if _run(tool, "-C", *jump).returncode == 0:
        return
    added = _run(tool, "-I", "POSTROUTING", "1", *jump[1:]) if first else _run(tool, "-A", *jump)
    if added.returncode != 0:
        raise NetlinkError(f"adding the jump to {chain} with {tool}: {added.stderr.strip()}")


def _remove_chain(tool: str, chain: str, comment: str) -> None:
    jump = jump_rule(chain, comment)
    for _ in range(_MAX_DUPLICATES):
        if _run(tool, "-D", *jump).returncode != 0:
            break
    _run(tool, "-F", chain)
    _run(tool, "-X", chain)


def remove_all() -> None:
    """Every nat rule cilia added in this namespace, both families (idempotent)."""
    for tool in TOOLS.values():
        _remove_legacy(tool)
        for chain, comment in CHAINS:
            _remove_chain(tool, chain, comment)


def cilia_rules(version: int) -> list[str]:
    """The nat table's lines (iptables -S) that are cilia's: its chains' rules and the jumps."""
    listing = _run(TOOLS[version], "-S")
    if listing.returncode != 0:
        raise NetlinkError(f"{TOOLS[version]} -t nat -S: {listing.stderr.strip()}")
    names = (MASQ_CHAIN, SNAT_CHAIN, MASQ_COMMENT, SNAT_COMMENT)
    return [line for line in listing.stdout.splitlines() if any(name in line for name in names)]

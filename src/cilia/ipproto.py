"""IP protocol numbers and their names: the one table parsers, map dumps and flows share.

Objects spell protocols in upper case (`TCP`, `ICMPV6`); parsing takes any case. Dumps, flows and
rule texts print `TCP`, `UDP`, `SCTP`, `ICMP` and `ICMPv6`.
"""

from __future__ import annotations

from typing import Final

ICMP: Final = 1
TCP: Final = 6
UDP: Final = 17
ICMPV6: Final = 58
SCTP: Final = 132

NAMES: Final[dict[int, str]] = {TCP: "TCP", UDP: "UDP", SCTP: "SCTP", ICMP: "ICMP", ICMPV6: "ICMPv6"}
_BY_NAME: Final[dict[str, int]] = {name.upper(): number for number, name in NAMES.items()}

# Protocols with ports (policy port rules, services, conntrack tuples with ports).
PORT_PROTOCOLS: Final = (TCP, UDP, SCTP)


def name_of(number: int) -> str:
    """`TCP` for 6; an unknown number prints as itself."""
    return NAMES.get(number, str(number))


def number_of(name: str) -> int:
    """6 for `tcp`, `TCP` or `Tcp`; KeyError names what was given when it is no known protocol."""
    try:
        return _BY_NAME[name.upper()]
    except KeyError:
        raise KeyError(f"unknown IP protocol {name!r} (known: {', '.join(NAMES.values())})") from None


def is_known(name: str) -> bool:
    return name.upper() in _BY_NAME

"""The lab's DNS server: Debian's dnsmasq on an external host `dns` (netns cilia-ext-dns,
198.51.100.53 and 2001:db8:100::35, UDP and TCP on both), serving the test zone below and nothing
else (no upstream, no /etc/hosts).

The zone's addresses are the first lab externals' (externals[i] is 198.51.100.(10+i)), so a
topology that lists externals gets names for them:

    api.example.test     A 198.51.100.10, A 198.51.100.11, AAAA 2001:db8:100::a   (TTL 60)
    www.example.test     CNAME api.example.test;  alias.example.test CNAME www.example.test
    *.cdn.example.test   A 198.51.100.12 (any name under cdn.example.test)
    other.example.test   A 198.51.100.13
    short.example.test   A 198.51.100.14, TTL 2
    many.example.test    A 198.51.100.10 .. 198.51.100.14 (five records)
Any other name under example.test: NXDOMAIN.
"""

from __future__ import annotations

from pathlib import Path

from cilia.lab.topology import ExternalSpec

DNS_HOST = ExternalSpec("dns", 43)  # 198.51.100.53
ZONE_TTL = 60
SHORT_TTL = 2
HOSTS = """\
198.51.100.10 api.example.test
198.51.100.11 api.example.test
2001:db8:100::a api.example.test
198.51.100.13 other.example.test
198.51.100.10 many.example.test
198.51.100.11 many.example.test
198.51.100.12 many.example.test
198.51.100.13 many.example.test
198.51.100.14 many.example.test
"""


def write_config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    hosts = directory / "dnsmasq.hosts"
    hosts.write_text(HOSTS)
    conf = directory / "dnsmasq.conf"
    conf.write_text("\n".join([
        "no-resolv", "no-hosts", "no-poll", "bind-interfaces", "user=root", "group=root",
        f"listen-address={DNS_HOST.ipv4},{DNS_HOST.ipv6}", "port=53", f"local-ttl={ZONE_TTL}",
        "local=/example.test/", f"addn-hosts={hosts}",
        "cname=www.example.test,api.example.test", "cname=alias.example.test,www.example.test",
        "address=/cdn.example.test/198.51.100.12",
        f"host-record=short.example.test,198.51.100.14,{SHORT_TTL}",
        "log-facility=-", "log-queries", "",
    ]))
    return conf


def command(conf: Path) -> list[str]:
    return ["/usr/sbin/dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", "--pid-file="]

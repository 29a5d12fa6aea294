#!/usr/bin/env bash
# Installs everything cilia needs on a fresh Debian 12 machine: apt packages, a Python venv
# with cilia and its dependencies, and the BPF objects. Idempotent; safe to run again.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${CILIA_VENV:-/opt/cilia/venv}

apt_packages=(
  clang llvm libbpf-dev bpftool linux-libc-dev libc6-dev make
  iproute2 iptables ethtool procps util-linux
  openssl  # the lab's etcd TLS certificates (cilia.lab.certs)
  python3 python3-venv python3-dev
  iperf3 sockperf
  # real CNI clients the e2e tests drive
  podman runc containernetworking-plugins busybox-static containerd
  # the cluster's kvstore (lab, tests)
  etcd-server etcd-client
  # a real browser for the service map's e2e test (headless, driven over the DevTools protocol)
  chromium
  # a real Prometheus scraping a lab's agents (e2e, docs/observability.md); run in lab namespaces only
  prometheus
  # bench.l7: the HTTP load generator, and nginx as origin server and reference reverse proxy (lab namespaces only)
  wrk nginx-light
  # the lab's DNS server for FQDN policy (cilia.lab.dns): the binary only, no system service
  dnsmasq-base
  # a real grpc-go client (the transport hubble's CLI uses) for the Hubble server's test (GOPATH mode)
  golang-go golang-google-grpc-dev
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Maintainer scripts must not start the packages' services (nginx on :80, prometheus on :9090
  # would listen in the root network namespace): Debian's policy-rc.d "101 = action forbidden",
  # for this install only, and only if the machine has none of its own.
  policy_rc=/usr/sbin/policy-rc.d
  ours=0
  if [ ! -e "$policy_rc" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy_rc" && chmod 0755 "$policy_rc" && ours=1
    trap 'rm -f "$policy_rc"' EXIT  # also when the install fails
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$ours" = 1 ]; then rm -f "$policy_rc"; trap - EXIT; fi
fi

# Debian's prometheus package enables a system service listening on :9090 in the root network
# namespace; cilia runs Prometheus only inside lab namespaces (cilia.testing.prometheus).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  systemctl disable --now nginx.service >/dev/null 2>&1 || true  # likewise :80; bench.l7 runs its own
fi

# The venv uses Debian's python3 so the install does not depend on a pyenv shim on PATH.
if [ ! -x "$venv/bin/python" ]; then
  echo "install-deps: creating venv $venv"
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip >/dev/null
"$venv/bin/pip" install -q -e "$here[dev]"

make -C "$here" bpf
make -C "$here" proto VENV="$venv"

mkdir -p /usr/local/bin /opt/cni/bin
for cmd in cilia cilia-agent cilia-cni cilia-relay cilia-proxy; do
  ln -sf "$venv/bin/$cmd" "/usr/local/bin/$cmd"
done
ln -sf "$venv/bin/cilia-cni" /opt/cni/bin/cilia-cni
echo "install-deps: done (venv $venv; cilia, cilia-agent, cilia-cni, cilia-relay, cilia-proxy on PATH; /opt/cni/bin/cilia-cni)"

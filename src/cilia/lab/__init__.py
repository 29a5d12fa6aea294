"""cilia.lab: a cluster in network namespaces (docs/lab.md). `lab` is the lab itself, over `fabric`
(the network between hosts) and `process` (what runs where, stopped by pid); `server` and `probe`
run inside the namespaces; `topology` reads the topology file; `demo` is `make demo`."""

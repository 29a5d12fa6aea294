"""The agent's Prometheus metrics: a collector read at scrape time (`collector`) and the HTTP
server that serves it on `--prometheus-serve-addr` (`server`)."""

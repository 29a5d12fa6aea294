"""cilia-relay: Hubble Relay for cilia. Finds the nodes (discovery), keeps a connection to each
node's Observer (pool), serves the same Observer API with every node's flows merged in time order
(observer, merge), its /metrics (metrics) and the live service map page (web, ui/)."""

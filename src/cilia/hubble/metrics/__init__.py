"""Hubble's flow metrics (`--hubble-metrics`): the option syntax (`options`), label contexts
(`context`), one handler per metric with Hubble's names and labels (`handlers`), and the
background step that feeds them from the agent's flow ring and serves them on /metrics
(`processor`). See docs/observability.md#hubble-flow-metrics."""

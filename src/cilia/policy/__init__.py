"""Network policy: rule types, parsing of NetworkPolicy / CNP / CCNP, resolution per endpoint,
the datapath's map state and `policy trace`. Pure Python: nothing here touches the kernel."""

"""Reads the datapath's events: ring-buffer records decoded into typed events."""

"""Endpoints: the persisted record, the state machine and the on-disk store (pure: no kernel)."""

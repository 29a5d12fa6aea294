"""Flows: datapath events enriched with endpoints and identities, kept, filtered and served."""

"""FQDN policy: DNS name patterns, the name cache the DNS proxy fills, the FQDN identities."""

"""One module per BPF map: versioned pinned name, key/value codecs and a typed accessor."""

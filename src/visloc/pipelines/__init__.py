"""Steps that chain by their outputs: each takes paths, writes one, skips what is done."""

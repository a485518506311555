"""Image retrieval: a faiss index of global descriptors and the pairs it retrieves (hloc's pairs-from-retrieval)."""

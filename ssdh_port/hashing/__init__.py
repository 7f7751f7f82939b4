"""Hashing: binary codes, Hamming distances and the retrieval metrics."""
from ssdh_port.hashing.codes import as_bits, binarize, hamming_distances  # noqa: F401
from ssdh_port.hashing.metrics import evaluate, relevance_matrix  # noqa: F401

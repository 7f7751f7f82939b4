"""Hashing: binary codes, the Hamming index, the retrieval metrics and the
baseline hash functions."""
from ssdh_port.hashing.baselines import CCAITQ, ITQ, LSH  # noqa: F401
from ssdh_port.hashing.codes import as_bits, as_packed, code_report, hamming_distances  # noqa: F401
from ssdh_port.hashing.index import HammingIndex, IndexFileError, coarse_to_fine  # noqa: F401
from ssdh_port.hashing.live import LiveIndex, LiveIndexError  # noqa: F401
from ssdh_port.hashing.patches import PatchIndex, patch_boxes, two_stage_search  # noqa: F401
from ssdh_port.hashing.milvus import MilvusError, MilvusIndex  # noqa: F401  (pymilvus imported on use)
from ssdh_port.hashing.metrics import average_precision, dnnh_map, evaluate, relevance_matrix  # noqa: F401

"""Location of the real Caffe artefacts (../shared/data beside the repository)."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("SSDH_SHARED_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))
ORACLE = os.path.join(SHARED, "caffe-oracle")

needs_shared = pytest.mark.skipif(
    not os.path.isdir(ORACLE), reason=f"real Caffe artefacts not found at {SHARED}")


def shared(*parts):
    return os.path.join(SHARED, *parts)


def oracle(*parts):
    return os.path.join(ORACLE, *parts)

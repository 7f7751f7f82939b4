"""Progress bars and the library's logger.

Long loops (conversions, feature extraction, training) show a tqdm bar on
stderr; SSDH_PROGRESS=0 turns the bars off (tests, logs captured to files).
Messages go through the `ssdh_port` logger; the tools decide where they go.
"""
import logging
import os

from tqdm.auto import tqdm

logger = logging.getLogger("ssdh_port")


def enabled():
    return os.environ.get("SSDH_PROGRESS", "1") != "0"


def bar(iterable=None, total=None, desc=None, unit="it", disable_if=False, **kwargs):
    """A tqdm bar over iterable (or a manual one with total, advanced by
    .update(n)); off when SSDH_PROGRESS=0 or disable_if."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable_if or not enabled(),
                dynamic_ncols=True, leave=False, **kwargs)

"""Progress bars and the library's logger.

Long loops (conversions, feature extraction, training) show a tqdm bar on
stderr when it is a terminal; SSDH_PROGRESS=0 turns the bars off, SSDH_PROGRESS=1
shows them whatever stderr is.
Messages go through the `ssdh_port` logger; the tools decide where they go.
"""
import logging
import os
import sys

from tqdm.auto import tqdm

logger = logging.getLogger("ssdh_port")


def enabled():
    setting = os.environ.get("SSDH_PROGRESS", "")
    if setting in ("0", "1"):
        return setting == "1"
    return sys.stderr is not None and sys.stderr.isatty()


def bar(iterable=None, total=None, desc=None, unit="it", disable_if=False, **kwargs):
    """A tqdm bar over iterable (or a manual one with total, advanced by
    .update(n)); off when stderr is no terminal (see enabled()) or disable_if."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable_if or not enabled(),
                dynamic_ncols=True, leave=False, **kwargs)

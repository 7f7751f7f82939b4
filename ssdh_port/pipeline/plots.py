"""PNG figures for the tools: matplotlib without a display, files written whole."""
from ssdh_port.caffe.io import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path, dpi=100):
    """Lay fig out, write it to path through a temporary file renamed when
    complete, and close it."""
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=dpi)
    pyplot().close(fig)

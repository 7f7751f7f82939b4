"""The pipeline's PNG figures (matplotlib without a display, files written whole):
training curves, retrieval curves, retrieval examples."""
import numpy as np

from ssdh_port.fileio import atomic_write
from ssdh_port.progress import logger


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


def training_curves(records, tests, path):
    """Losses of the displayed iterations (and the test outputs) of a training log."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if tests else 1, figsize=(11 if tests else 6, 4), squeeze=False)
    ax = axes[0][0]
    iters = [r["iter"] for r in records]
    ax.plot(iters, [r["smoothed_loss"] for r in records], label="total (smoothed)", lw=2)
    for name in records[0]["outputs"] if records else []:
        ax.plot(iters, [r["outputs"][name] for r in records], label=name, lw=1)
    # The SSDH terms differ by orders of magnitude (the fire-rate loss is ~1e-4, the
    # forcing-binary one negative): a symmetric log axis shows them all.
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("iteration")
    ax.set_title("training (symmetric log scale)")
    ax.legend(fontsize=7)
    if tests:
        ax = axes[0][1]
        for name in tests[0]["outputs"]:
            values = [t["outputs"][name] for t in tests]
            if all(isinstance(v, float) for v in values):
                ax.plot([t["iter"] for t in tests], values, marker="o", label=name)
        ax.set_xlabel("iteration")
        ax.set_title("test net outputs")
        ax.legend(fontsize=7)
    save_png(fig, path, dpi=110)


# The published precision@k curves (the authors' analysis folders) are CIFAR-10's:
# 10,000 test queries against the 50,000 training images.
PUBLISHED_CURVES_DATABASE = 50000


def retrieval_curves(evaluations, references, path):
    """precision@k, precision-recall and mAP against code length of Evaluations,
    with published precision@k curves ({name: k x 2 array}) dashed beside them
    (over the ranks they cover, with a warning when the evaluated database is
    not the one they were measured on)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    for ev in evaluations:
        curve = ev.precision_at_k
        ax.plot(np.arange(1, len(curve) + 1), curve, lw=2, label=ev.report.method)
    for name, data in references.items():
        ax.plot(data[:, 0], data[:, 1], ls="--", marker="o", ms=3, label=f"{name} (published)")
    if references:
        ax.set_xlim(0, max(1000, max(float(d[:, 0].max()) for d in references.values())))
        other = sorted({ev.report.database for ev in evaluations} - {PUBLISHED_CURVES_DATABASE})
        if other:
            logger.warning("the published curves were measured on CIFAR-10 (a database of %d images); "
                           "these results have a database of %s images: compare with care",
                           PUBLISHED_CURVES_DATABASE, ", ".join(map(str, other)))
    ax.set(xlabel="number of retrieved images k", ylabel="precision@k", title="precision@k")
    ax.legend(fontsize=7)
    ax = axes[1]
    for ev in evaluations:
        if ev.pr_recall is not None:
            ax.plot(ev.pr_recall, ev.pr_precision, marker=".", label=ev.report.method)
    ax.set(xlabel="recall", ylabel="precision", title="precision-recall (Hamming radius sweep)")
    ax.legend(fontsize=7)
    ax = axes[2]
    by_name = {}
    for ev in evaluations:
        by_name.setdefault(ev.report.method.split("-")[0], []).append((ev.report.bits, ev.report.map_at_topk))
    if any(len({b for b, _ in points}) > 1 for points in by_name.values()):
        for name, points in by_name.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set(xlabel="code length (bits)", ylabel="mAP", title="mAP against code length")
        ax.legend(fontsize=7)
    else:
        # One code length per method: a table says more than single dots would.
        ax.axis("off")
        lines = [f"{ev.report.method}: {ev.report.bits} bits, mAP@{ev.report.topk} {ev.report.map_at_topk:.4f}"
                 for ev in evaluations]
        ax.text(0.0, 1.0, "\n".join(lines[:20]), va="top", fontsize=8, family="monospace")
        ax.set_title("mAP (one code length each)")
    save_png(fig, path, dpi=110)


def retrieval_picture(query_images, query_labels, db_images, db_labels, ids, path, rows=8, distances=None):
    """Queries (one per row) with their nearest database images, wrong classes in
    red, each with its Hamming distance when given."""
    plt = pyplot()
    top = ids.shape[1]
    fig, axes = plt.subplots(rows, top + 1, figsize=(1.1 * (top + 1), 1.15 * rows))
    for r in range(rows):
        axes[r][0].imshow(query_images[r], cmap="gray")
        axes[r][0].set_title("query", fontsize=7)
        for c in range(top):
            j = int(ids[r, c])
            ax = axes[r][c + 1]
            ax.imshow(db_images[j], cmap="gray")
            wrong = db_labels[j] != query_labels[r]
            for spine in ax.spines.values():
                spine.set_visible(bool(wrong))
                spine.set_color("red")
                spine.set_linewidth(3)
            distance = "" if distances is None else f"d={int(distances[r, c])} "
            if wrong:
                ax.set_title(f"{distance}wrong ({db_labels[j]})", fontsize=6, color="red")
            elif distance:
                ax.set_title(distance.strip(), fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Hamming retrieval: queries and their top {top} (wrong class in red)", fontsize=9)
    save_png(fig, path)


def epoch_curves(history, path, title):
    """Loss and training accuracy per epoch of a plain-PyTorch training log."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], label="SSDH loss")
    ax.plot(epochs, [h["train_accuracy"] for h in history], label="train accuracy")
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, path)

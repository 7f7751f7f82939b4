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


def training_figure(records, tests):
    """One small panel per curve, each on its own linear axis (the SSDH terms
    differ by orders of magnitude and the forcing-binary one is negative, so one
    shared axis, or a symmetric-log one, misleads): the smoothed total, each
    loss output of the displayed iterations, then each test output. Panels are
    titled, not given legends (nothing covers a curve)."""
    plt = pyplot()
    panels = [("train: total loss (smoothed)", [r["iter"] for r in records], [r["smoothed_loss"] for r in records])]
    for name in records[0]["outputs"] if records else []:
        panels.append((f"train: {name}", [r["iter"] for r in records], [r["outputs"][name] for r in records]))
    for name in tests[0]["outputs"] if tests else []:
        values = [t["outputs"][name] for t in tests]
        if all(isinstance(v, float) for v in values):
            panels.append((f"test: {name}", [t["iter"] for t in tests], values))
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.6 * rows), squeeze=False)
    for ax, (title, x, y) in zip(axes.flat, panels):
        test = title.startswith("test")
        ax.plot(x, y, marker="o" if test else None, ms=3, lw=1.5, color="C1" if test else "C0")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("iteration", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    return fig


def training_curves(records, tests, path):
    """training_figure written to path."""
    save_png(training_figure(records, tests), path, dpi=110)


# The published precision@k curves (the authors' analysis folders) are CIFAR-10's:
# 10,000 test queries against the 50,000 training images.
PUBLISHED_CURVES_DATABASE = 50000


def retrieval_figure(evaluations, references):
    """precision@k and precision-recall of Evaluations, with published
    precision@k curves ({name: k x 2 array}) dashed beside them (over the ranks
    they cover, with a warning when the evaluated database is not the one they
    were measured on), and mAP against code length when a method has several.
    Precision axes run from 0 to 1, so a flat curve looks flat."""
    plt = pyplot()
    by_name = {}
    for ev in evaluations:
        by_name.setdefault(ev.report.method.split("-")[0], []).append((ev.report.bits, ev.report.map_at_topk))
    several_lengths = any(len({b for b, _ in points}) > 1 for points in by_name.values())
    fig, axes = plt.subplots(1, 3 if several_lengths else 2, figsize=(16 if several_lengths else 11, 4.5))
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
    ax.set(xlabel="number of retrieved images k", ylabel="precision@k", title="precision@k", ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower left")
    ax = axes[1]
    for ev in evaluations:
        if ev.pr_recall is not None:
            ax.plot(ev.pr_recall, ev.pr_precision, marker=".", label=ev.report.method)
    ax.set(xlabel="recall", ylabel="precision", title="precision-recall (Hamming radius sweep)",
           xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower left")
    if several_lengths:
        ax = axes[2]
        for name, points in by_name.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set(xlabel="code length (bits)", ylabel="mAP", title="mAP against code length", ylim=(0, 1.02))
        ax.legend(fontsize=7, loc="lower right")
    return fig


def retrieval_curves(evaluations, references, path):
    """retrieval_figure written to path."""
    save_png(retrieval_figure(evaluations, references), path, dpi=110)


EXAMPLE_RANKS = (1, 2, 3, 10, 50, 100, 500, 1000)


def pick_examples(query_labels, db_labels, ids, per_class=1):
    """Which queries and ranks a retrieval picture shows: ranks 1, 2, 3, 10, 50,
    100, 500, 1000 (those the search returned), so that the picture shows how the
    ranking degrades; per class of the queries, the query with the most wrong
    results at those ranks (every class is shown, failures first). Returns
    (query rows, 1-based ranks)."""
    ranks = [r for r in EXAMPLE_RANKS if r <= ids.shape[1]]
    columns = ids[:, [r - 1 for r in ranks]]
    wrong = (np.asarray(db_labels)[columns] != np.asarray(query_labels)[:, None]).sum(1)
    rows = []
    for label in sorted(set(np.asarray(query_labels).tolist())):
        members = np.flatnonzero(np.asarray(query_labels) == label)
        order = members[np.argsort(-wrong[members], kind="stable")]
        rows.extend(int(i) for i in order[:per_class])
    return rows, ranks


def retrieval_figure_examples(query_images, query_labels, db_images, db_labels, ids, ranks, distances=None):
    """Queries (one per row, with their label) and their results at the given
    1-based ranks, each titled with its rank and Hamming distance; a result of
    another class is framed in red with its label."""
    plt = pyplot()
    rows = len(query_images)
    fig, axes = plt.subplots(rows, len(ranks) + 1, figsize=(1.15 * (len(ranks) + 1), 1.25 * rows), squeeze=False)
    for r in range(rows):
        axes[r][0].imshow(query_images[r], cmap="gray")
        axes[r][0].set_title(f"query: {query_labels[r]}", fontsize=7)
        for c, rank in enumerate(ranks):
            j = int(ids[r, rank - 1])
            ax = axes[r][c + 1]
            ax.imshow(db_images[j], cmap="gray")
            wrong = db_labels[j] != query_labels[r]
            for spine in ax.spines.values():
                spine.set_visible(bool(wrong))
                spine.set_color("red")
                spine.set_linewidth(3)
            distance = "" if distances is None else f" d={int(distances[r, rank - 1])}"
            title = f"#{rank}{distance}" + (f" ({db_labels[j]})" if wrong else "")
            ax.set_title(title, fontsize=6, color="red" if wrong else "black")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Hamming retrieval: each class's hardest query, its results at ranks "
                 f"{', '.join(map(str, ranks))} (d: Hamming distance; another class framed red, its label shown)",
                 fontsize=8)
    return fig


def retrieval_picture(query_images, query_labels, db_images, db_labels, ids, path, ranks, distances=None):
    """retrieval_figure_examples written to path."""
    save_png(retrieval_figure_examples(query_images, query_labels, db_images, db_labels, ids, ranks, distances),
             path)


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

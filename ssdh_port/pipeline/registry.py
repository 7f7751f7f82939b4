"""The datasets a spec names ([data] dataset = ...): how each is prepared, which
databases the Caffe recipes read, how its images are encoded, its labels.

    mnist           MNIST from the idx files shipped with the package -> LMDBs;
                    LeNet's scale 1/256
    cifar10         the authors' CIFAR-10 JPEG archive (data.archive) -> 32 x 32 RGB
                    LMDBs and their mean (what Caffe's cifar10_quick was trained on)
    mnist-mosaics   two-digit MNIST mosaics, multi-hot labels, HDF5 sets; the
                    training set with half of each row's labels "don't care" when
                    asked (data.dont_care = 0.5)
    cifar10-dnnh    DNNH's split of CIFAR-10 (`ssdh prepare cifar10-dnnh`): triplet,
                    query and pool databases for the DNNH nets, and the same split as
                    32 x 32 image databases for the other methods

Each prepare() returns a PreparedData: the queries are the test split, the
database the training split, as in the papers' protocol.
"""
import dataclasses
import os

from ssdh_port.errors import SSDHError

LENET_SCALE = 0.00390625  # 1/256


@dataclasses.dataclass
class PreparedData:
    name: str
    sources: dict                      # Caffe phase -> database / list (TRAIN, TEST)
    encode: dict                       # split ("test", "train") -> what the encoder reads
    transform: object = None           # TransformationParameter of the encoder (deploy nets)
    mean_file: str | None = None
    arrays: dict | None = None         # split -> (images, labels) held in memory (mosaics; scaled by transform)
    files: dict = dataclasses.field(default_factory=dict)


def _mnist(data, model):
    from ssdh_port.data import datasets
    from ssdh_port.data.transformer import transform_param

    lmdbs = datasets.prepare_mnist(data.dir)
    return PreparedData("mnist", {"TRAIN": lmdbs["train"], "TEST": lmdbs["test"]}, dict(lmdbs),
                        transform=transform_param(scale=LENET_SCALE))


def _cifar10(data, model):
    from ssdh_port.data import datasets
    from ssdh_port.data.transformer import transform_param

    if model.kind == "torch":
        # The trainer's 32 x 32 databases (OpenCV's BGR records, as convert_imageset writes them).
        splits = {split: os.path.join(data.dir, f"{split}_lmdb_32") for split in ("test", "train")}
        if not all(os.path.isdir(path) for path in splits.values()):
            if not data.archive:
                raise SSDHError(f"[data] cifar10: {data.dir} has no train_lmdb_32 / test_lmdb_32; give archive = "
                                "the authors' CIFAR-10 JPEG archive to make them")
            datasets.prepare_cifar10_jpg(data.archive, data.dir, sizes=(32,))
        return PreparedData("cifar10", {}, splits)
    if not data.archive:
        raise SSDHError("[data] cifar10: give archive = the authors' CIFAR-10 JPEG archive")
    made = datasets.prepare_cifar10_jpg(data.archive, data.dir, sizes=(32,), layout="rgb")
    splits = {"test": made["test_lmdb_32"], "train": made["train_lmdb_32"]}
    return PreparedData("cifar10", {"TRAIN": splits["train"], "TEST": splits["test"]}, splits,
                        transform=transform_param(mean_file=made["mean_32"]), mean_file=made["mean_32"])


def _mnist_mosaics(data, model):
    from ssdh_port.data.mosaics import prepare_mnist_mosaics
    from ssdh_port.data.transformer import transform_param

    sets, lists = prepare_mnist_mosaics(data.dir, LENET_SCALE)
    half = data.dont_care
    if half not in (0.0, 0.5):
        raise SSDHError(f"[data] mnist-mosaics: dont_care {half}: the sets made are 0 and 0.5")
    train = lists["train_half_labels" if half else "train"]
    return PreparedData("mnist-mosaics", {"TRAIN": train, "TEST": lists["test"]}, {}, arrays=sets,
                        transform=transform_param(scale=LENET_SCALE), files={"dont_care": half})


def _cifar10_dnnh(data, model):
    if model.kind == "torch":
        from ssdh_port.data.dnnh import split_image_dbs

        images = os.path.join(data.dir, "ssdh_split")
        paths = split_image_dbs(data.dir, images)
        return PreparedData("cifar10-dnnh", {}, {"test": paths["test"], "train": paths["train"]})
    files = {name: os.path.abspath(os.path.join(data.dir, name)) for name in (
        "triplet_lmdb", "query_lmdb", "pool_lmdb", "triplet_mean.binaryproto", "query_label.txt", "pool_label.txt")}
    missing = [path for path in files.values() if not os.path.exists(path)]
    if missing:
        raise SSDHError(f"cifar10-dnnh: {missing[0]} is missing: make the split with "
                        f"`ssdh prepare cifar10-dnnh ARCHIVE --out-dir {data.dir}`")
    return PreparedData("cifar10-dnnh", {"TRAIN": files["triplet_lmdb"]},
                        {"test": files["query_lmdb"], "train": files["pool_lmdb"]},
                        mean_file=files["triplet_mean.binaryproto"], files=files)


DATASETS = {"mnist": _mnist, "cifar10": _cifar10, "mnist-mosaics": _mnist_mosaics, "cifar10-dnnh": _cifar10_dnnh}


def prepare(data, model):
    """The PreparedData of a spec's [data] for its [model]."""
    if data.dataset not in DATASETS:
        raise SSDHError(f"[data] dataset {data.dataset!r}: expected one of {sorted(DATASETS)}")
    return DATASETS[data.dataset](data, model)

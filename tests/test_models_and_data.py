"""MNIST reader, fillers and the plain-PyTorch SSDH model."""
import gzip
import math

import numpy as np
import pytest
import torch

from ssdh_port.fillers import fill_
from ssdh_port.data import mnist
from ssdh_port.models import LeNetSSDH, SSDHLoss
from ssdh_port import ops


def test_shipped_mnist_reads():
    images, labels = mnist.load_split("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    # First test digit of MNIST is a 7.
    assert labels[0] == 7


def test_mnist_bad_files(tmp_path):
    bad_magic = tmp_path / "x-images.gz"
    with gzip.open(bad_magic, "wb") as f:
        f.write(np.array([2049, 1, 2, 2], ">u4").tobytes() + bytes(4))
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        mnist.read_images(str(bad_magic))
    truncated = tmp_path / "y-images"
    truncated.write_bytes(np.array([2051, 2, 28, 28], ">u4").tobytes() + bytes(100))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        mnist.read_images(str(truncated))
    with pytest.raises(ValueError, match="split must be one of"):
        mnist.load_split("validation")


def test_fillers_follow_caffe_fan_rules():
    g = torch.Generator().manual_seed(0)
    w = fill_(torch.empty(200, 50, 3, 3), "xavier", generator=g)
    bound = math.sqrt(3.0 / (50 * 9))
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    w = fill_(torch.empty(300, 400), "msra", variance_norm="FAN_OUT", generator=g)
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / 300), rel=0.02)
    w = fill_(torch.empty(4, 6), "positive_unitball", generator=g)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(4))
    w = fill_(torch.empty(1, 1, 4, 4), "bilinear")
    # kernel 4 (upsampling by 2): 1-D profile 0.25, 0.75, 0.75, 0.25
    torch.testing.assert_close(w[0, 0, 0], torch.tensor([0.0625, 0.1875, 0.1875, 0.0625]))
    # BVLC master at 9b891540: f = ceil(k / 2), c = (k - 1) / (2f), w = (1 - |x/f - c|)(1 - |y/f - c|).
    for k in (3, 6, 7):
        f = math.ceil(k / 2)
        profile = torch.tensor([1 - abs(x / f - (k - 1) / (2 * f)) for x in range(k)])
        w = fill_(torch.empty(2, 1, k, k), "bilinear")
        torch.testing.assert_close(w[1, 0], profile[:, None] * profile[None, :])
        torch.testing.assert_close(w[0, 0], w[0, 0].flip(0).flip(1))  # symmetric at every size
    with pytest.raises(ValueError, match="unknown filler type 'glorot'"):
        fill_(torch.empty(2, 2), "glorot")


def test_lenet_ssdh_shapes_and_objective():
    model = LeNetSSDH(bits=12)
    latent, scores = model(torch.rand(3, 1, 28, 28))
    assert latent.shape == (3, 12) and scores.shape == (3, 10)
    assert torch.all((latent > 0) & (latent < 1))
    total, terms = SSDHLoss(alpha=1, beta=0.5, gamma=2)(latent, scores, torch.tensor([1, 2, 3]))
    expected = (torch.nn.functional.cross_entropy(scores, torch.tensor([1, 2, 3]))
                + 0.5 * ops.forcing_binary_loss(latent) + 2 * ops.fire_rate_loss(latent))
    torch.testing.assert_close(total, expected)
    assert set(terms) == {"classification", "forcing_binary", "fire_rate"}


def test_resnet_ssdh_latent_stays_float32_under_autocast():
    from ssdh_port.models.resnet import ResNetSSDH

    model = ResNetSSDH(bits=16, width=4).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        latent, scores = model(images)
    assert latent.dtype == torch.float32 and scores.dtype == torch.float32
    assert latent.shape == (2, 16) and scores.shape == (2, 10)
    # Zero-initialised last norms: each block starts as the identity (plus the shortcut).
    block = model.stages[0]
    x = torch.relu(torch.randn(1, 4, 8, 8))
    torch.testing.assert_close(block(x), x)
    # The SSDH losses' gradients reach the backbone.
    latent, scores = model.train()(images)
    SSDHLoss()(latent, scores, torch.tensor([1, 2]))[0].backward()
    assert model.stem[0].weight.grad.abs().sum() > 0


def test_pair_mosaics_and_dont_care_labels(tmp_path):
    import h5py

    from ssdh_port.data.mosaics import pair_mosaics, signed_labels, write_hdf5_set

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, 50)
    mosaics, multi_hot = pair_mosaics(images, labels, 5, seed=1)
    assert mosaics.shape == (50, 4, 6) and np.array_equal(mosaics[:, :, :3], images)
    # Every image is the right half of exactly one other mosaic, labelled with both classes.
    rights = [next(j for j in range(50) if np.array_equal(mosaics[i, :, 3:], images[j])
                   and j != i) for i in range(50)]
    assert sorted(rights) == list(range(50))
    for i, j in enumerate(rights):
        assert set(np.flatnonzero(multi_hot[i])) == {labels[i], labels[j]}
    signed = signed_labels(multi_hot, dont_care=0.4, seed=2)
    assert ((signed == 0).sum(axis=1) == 2).all()  # 40 % of 5 labels per row
    known = signed != 0
    assert np.array_equal(signed[known] > 0, multi_hot[known] > 0)
    listing = write_hdf5_set(str(tmp_path), "set", mosaics, signed, scale=0.5)
    with h5py.File(open(listing).read().strip()) as f:
        assert f["data"].shape == (50, 1, 4, 6) and f["data"].dtype == np.float32
        np.testing.assert_array_equal(f["data"][:, 0], mosaics * 0.5)
        np.testing.assert_array_equal(f["label"][()], signed)
    with pytest.raises(ValueError, match="need N >= 2 images"):
        pair_mosaics(images[:1], labels[:1], 5, seed=0)


def test_fastnet_heads():
    from ssdh_port.errors import SSDHError
    from ssdh_port.models.fastnet import FastNetSSDH

    x = torch.randn(4, 3, 32, 32)
    ssdh = FastNetSSDH(bits=12, widths=(8, 16, 16))
    latent, scores = ssdh(x)
    assert latent.shape == (4, 12) and scores.shape == (4, 10) and bool(((latent > 0) & (latent < 1)).all())
    torch.testing.assert_close(scores, ssdh.classifier(latent))  # SSDH: the classifier reads the latent layer
    plain = FastNetSSDH(bits=12, widths=(8, 16, 16), head="plain")
    plain.load_state_dict(ssdh.state_dict(), strict=False)
    latent, scores = plain(x)
    # The recipe's own head reads the pooled features, scaled by 1/9.
    torch.testing.assert_close(scores, plain.head(plain.features(x)) / 9)
    with pytest.raises(SSDHError, match="head 'x': expected ssdh or plain"):
        FastNetSSDH(head="x")

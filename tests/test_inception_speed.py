"""The fast Inception extractor (smallgen/inception_speed.py) computes torch-fidelity's features: the same
network, weights, TF1 resize and preprocessing, laid out differently."""

import io

import numpy as np
import pytest
import torch

from tests.conftest import SAMPLE_CIFAR10


def real_images(count: int) -> torch.Tensor:
    """The first ``count`` CIFAR-10 images of the bundled sample, uint8 (N, 3, 32, 32)."""
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(SAMPLE_CIFAR10 / "plain_text" / "train-00000-of-00001.parquet").slice(0, count)
    arrays = [np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB")) for cell in table.column("img").to_pylist()]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.mark.parametrize("size", [(32, 32), (16, 16), (20, 28)])
def test_the_resize_is_torch_fidelitys_tf1_bilinear(size):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    from smallgen.inception_speed import tf1_resize_matrix

    images = torch.randint(0, 256, (2, 3, *size), generator=torch.Generator().manual_seed(0)).float()
    theirs = interpolate_bilinear_2d_like_tensorflow1x(images, size=(299, 299), align_corners=False)
    ours = tf1_resize_matrix(size[0], 299) @ images @ tf1_resize_matrix(size[1], 299).T
    assert (ours - theirs).abs().max() < 1e-3  # of 255 (4e-6 relative): float32 rounding, 5e-4 seen


def test_pool_features_and_logits_equal_torch_fidelitys(inception, tmp_path):
    """On real CIFAR-10 images: pool features and both logits within 1e-5 relative of torch-fidelity's own
    extractor (the converted weights have no classifier: a random one stands in, so the logits say something)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from smallgen.inception_speed import FastInceptionV3

    state = torch.load(inception.path, weights_only=True)
    state["fc.weight"] = torch.randn(state["fc.weight"].shape, generator=torch.Generator().manual_seed(1)) * 0.01
    state["fc.bias"] = torch.randn(state["fc.bias"].shape, generator=torch.Generator().manual_seed(2))
    torch.save(state, tmp_path / "with-classifier.pth")
    layers = ["2048", "logits_unbiased", "logits"]
    theirs_net = FeatureExtractorInceptionV3("inception-v3-compat", layers,
                                             feature_extractor_weights_path=str(tmp_path / "with-classifier.pth"))
    ours_net = FastInceptionV3(theirs_net)
    images = real_images(6)
    theirs, ours = theirs_net(images), ours_net(images)
    for name, a, b in zip(layers, ours, theirs):
        assert a.shape == b.shape and a.dtype == torch.float32
        assert relative(a, b) < 1e-5, name
    assert all(torch.equal(a, b) for a, b in zip(ours, ours_net(images)))  # no state carried between calls
    assert torch.equal(ours_net(images[:3])[0], ours[0][:3]) or relative(ours_net(images[:3])[0], ours[0][:3]) < 1e-6
    with pytest.raises(ValueError, match="expected uint8 images"):
        ours_net(images.float())


def test_scores_use_the_fast_extractor_and_keep_torch_fidelitys_features(inception):
    """What every score reads (smallgen.scores.inception_features) is the fast extractor's output, in order,
    whatever the batch size."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from smallgen.scores import POOL, UInt8Images, inception_features

    images = real_images(5)
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=inception.path)
    expected = theirs(images)[0]
    for batch_size, given in ((2, images), (32, UInt8Images(images))):
        features = inception_features(given, inception, batch_size=batch_size, verbose=False)[POOL]
        assert features.shape == (5, 2048) and relative(features, expected) < 1e-5

"""Encoders and heads: output shapes, state_dict round trip, registry errors, FLOP counts."""

import io

import pytest
import torch

from wsp_cirrhosis.errors import ConfigError
from wsp_cirrhosis.models.encoders import ENCODERS, build_encoder, encoder_flops
from wsp_cirrhosis.models.heads import ClassifierHead, ProjectionHead


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_maps_64px_slices_to_512_features(name):
    encoder = build_encoder(name)
    assert encoder.feature_dim == 512
    out = encoder(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 512) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_works_at_224px(name):
    with torch.no_grad():
        assert build_encoder(name).eval()(torch.rand(1, 1, 224, 224)).shape == (1, 512)


def test_heads_shapes():
    h = torch.randn(3, 512)
    assert ProjectionHead()(h).shape == (3, 128)
    assert ProjectionHead(in_dim=512, hidden=64, out=16)(h).shape == (3, 16)
    assert ClassifierHead()(h).shape == (3,)


def test_batchnorm_projection_head_spreads_nearly_identical_features():
    torch.manual_seed(0)
    h = torch.ones(16, 512) + 1e-3 * torch.randn(16, 512)  # an encoder near collapse
    cos = lambda z: torch.nn.functional.cosine_similarity(z[:, None], z[None], dim=-1)  # noqa: E731
    assert cos(ProjectionHead(norm="none")(h)).min() > 0.99
    assert cos(ProjectionHead(norm="batch")(h)).min() < 0.5  # batch statistics rescale the differences
    with pytest.raises(ConfigError, match="layer"):
        ProjectionHead(norm="layer")


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_state_dict_round_trip_gives_identical_outputs(name):
    torch.seed()  # fresh weights each run, not the process-start default seed
    source = torch.nn.Sequential(build_encoder(name), ProjectionHead()).eval()
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target = torch.nn.Sequential(build_encoder(name), ProjectionHead()).eval()
    target.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_build_encoder_with_unknown_name_lists_the_valid_names():
    with pytest.raises(ConfigError, match="unknown encoder 'resnet50'; choose one of: tinynet, resnet18"):
        build_encoder("resnet50")


def test_encoder_flops_are_positive_and_grow_with_size():
    tiny, resnet = encoder_flops("tinynet", 64), encoder_flops("resnet18", 64)
    assert 0 < tiny and 0 < resnet
    assert encoder_flops("tinynet", 128) == pytest.approx(4 * tiny, rel=0.01)

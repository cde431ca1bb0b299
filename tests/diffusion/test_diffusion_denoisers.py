import pytest
import torch

from diffusion.denoisers import MLPDenoiser, UNet, timestep_embedding


@pytest.mark.parametrize("size, widths", [(28, (32, 64)), (8, (32, 64)), (28, (16, 32, 32))])
def test_unet_keeps_the_image_shape_and_uses_t(size, widths):
    torch.manual_seed(0)
    model = UNet(widths=widths, attention=True).eval()
    x = torch.randn(2, 1, size, size)
    out0, out1 = model(x, torch.tensor([0, 0])), model(x, torch.tensor([500, 500]))
    assert out0.shape == x.shape and not torch.allclose(out0, out1)


def test_mlp_denoiser_and_embedding():
    emb = timestep_embedding(torch.tensor([0, 10]), 8)
    assert emb.shape == (2, 8) and torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert MLPDenoiser(dim=2)(torch.randn(5, 2), torch.arange(5)).shape == (5, 2)

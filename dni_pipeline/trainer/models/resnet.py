"""A residual CNN of pre-activation blocks (He et al. 2016, "Identity Mappings in Deep Residual Networks")
as an nn.Sequential whose children are the places a pipeline may cut it: the stem convolution, the
blocks, and the head. Each resolution after the first begins with a stride-2 block; BatchNorm throughout.

Input images (B, C, H, W); activations between stages (B, channels, H', W'); output logits (B, classes).
"""

from torch import nn

__all__ = ["PreActBlock", "resnet"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut; a block that changes width or resolution
    takes its shortcut through a 1x1 convolution of the pre-activated input."""

    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(channels_in), nn.BatchNorm2d(channels_out)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        changes = stride != 1 or channels_in != channels_out
        self.shortcut = nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False) if changes else None

    def forward(self, x):
        activated = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(activated)
        return skip + self.conv2(self.relu(self.bn2(self.conv1(activated))))


def resnet(input_shape: tuple[int, ...], num_classes: int, widths: list[int] = (16, 32, 64),
           blocks_per_width: int = 1) -> nn.Sequential:
    """Stem, then `blocks_per_width` blocks at each width (the first of each width after the first at
    stride 2), then BN-ReLU, global average pooling and the linear classifier."""
    channels = input_shape[0]
    children: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1, bias=False)]
    width_in = widths[0]
    for level, width in enumerate(widths):
        for block in range(blocks_per_width):
            children.append(PreActBlock(width_in, width, 2 if level > 0 and block == 0 else 1))
            width_in = width
    head = nn.Sequential(nn.BatchNorm2d(width_in), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width_in, num_classes))
    return nn.Sequential(*children, head)

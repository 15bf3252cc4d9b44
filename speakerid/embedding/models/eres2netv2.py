"""ERes2NetV2 (3D-Speaker), state-dict compatible with the official checkpoints.

Module and parameter names follow the official implementation exactly so that official files
load with ``load_state_dict(strict=True)``; the code itself is a clean re-statement of the
architecture: a ResNet trunk of Res2Net-style blocks whose sub-bands are merged by addition
(stages 1-2) or by attentional feature fusion (AFF, stages 3-4), a bottom-up fusion of stage 3
(downsampled) into stage 4, temporal statistics pooling (mean and std) and a linear embedding.
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InvalidCheckpointError


@dataclass(frozen=True)
class ERes2NetV2Config:
    """Constructor arguments; ``common`` is (64, 26, 2, 2), ``w24s4ep4`` is (64, 24, 4, 4)."""

    m_channels: int = 64
    base_width: int = 26
    scale: int = 2
    expansion: int = 2
    feat_dim: int = 80
    embedding_size: int = 192
    num_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    two_emb_layer: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["num_blocks"] = list(self.num_blocks)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> ERes2NetV2Config:
        d = dict(d)
        if "baseWidth" in d:  # the official spelling
            d["base_width"] = d.pop("baseWidth")
        if "num_blocks" in d:
            d["num_blocks"] = tuple(d["num_blocks"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


class ClippedReLU(nn.Hardtanh):
    """ReLU clipped at 20, as used inside the official blocks."""

    def __init__(self) -> None:
        super().__init__(0.0, 20.0, inplace=True)


class AFF(nn.Module):
    """Attentional feature fusion: a learned soft switch between two same-shaped inputs."""

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        inter = channels // r
        self.local_att = nn.Sequential(
            nn.Conv2d(channels * 2, inter, kernel_size=1),
            nn.BatchNorm2d(inter),
            nn.SiLU(inplace=True),
            nn.Conv2d(inter, channels, kernel_size=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        att = 1.0 + torch.tanh(self.local_att(torch.cat((x, y), dim=1)))
        return x * att + y * (2.0 - att)


class Block(nn.Module):
    """Res2Net-style bottleneck; sub-bands merged by addition or, with ``fuse``, by AFF."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        base_width: int,
        scale: int,
        expansion: int,
        fuse: bool,
    ) -> None:
        super().__init__()
        width = int(math.floor(planes * (base_width / 64.0)))
        out_planes = planes * expansion
        self.width = width
        self.scale = scale
        self.conv1 = nn.Conv2d(in_planes, width * scale, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(scale)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale))
        if fuse:
            self.fuse_models = nn.ModuleList(AFF(width, r=4) for _ in range(scale - 1))
        self.fuse = fuse
        self.relu = ClippedReLU()
        self.conv3 = nn.Conv2d(width * scale, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = torch.split(self.relu(self.bn1(self.conv1(x))), self.width, dim=1)
        outs = []
        sp = bands[0]
        for i in range(self.scale):
            if i > 0:
                sp = self.fuse_models[i - 1](sp, bands[i]) if self.fuse else sp + bands[i]
            sp = self.relu(self.bns[i](self.convs[i](sp)))
            outs.append(sp)
        out = self.bn3(self.conv3(torch.cat(outs, dim=1)))
        return self.relu(out + self.shortcut(x))


def statistics_pooling(x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """TSTP: per-channel-and-frequency mean and std over time (unbiased variance + 1e-8).

    With ``lengths`` (valid frames per item), padded frames are excluded exactly. At least in
    float32 (under bf16 autocast too): sums over hundreds of frames need its mantissa.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if lengths is None:
        mean = x.mean(dim=-1).flatten(start_dim=1)
        std = torch.sqrt(torch.var(x, dim=-1) + 1e-8).flatten(start_dim=1)
        return torch.cat((mean, std), dim=1)
    mask = (torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
    mask = mask[:, None, None, :]
    n = lengths.to(x.dtype)[:, None, None]
    mean = (x * mask).sum(dim=-1) / n
    var = (((x - mean.unsqueeze(-1)) * mask) ** 2).sum(dim=-1) / (n - 1)
    return torch.cat((mean.flatten(start_dim=1), torch.sqrt(var + 1e-8).flatten(start_dim=1)), 1)


def _valid_lengths(lengths: torch.Tensor, padded: int, current: int) -> torch.Tensor:
    """Valid frames at a resolution reached by repeated stride-2 halving (ceil each time)."""
    factor, size = 1, padded
    while size > current:
        size, factor = -(-size // 2), factor * 2
    return -(-lengths // factor)


class ERes2NetV2(nn.Module):
    """ERes2NetV2 speaker embedding network: ``[B, T, feat_dim]`` fbank → ``[B, emb]``."""

    def __init__(self, config: ERes2NetV2Config | None = None) -> None:
        super().__init__()
        c = config or ERes2NetV2Config()
        self.config = c
        m, e = c.m_channels, c.expansion
        self._in_planes = m
        self.conv1 = nn.Conv2d(1, m, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        self.layer1 = self._make_layer(m, c.num_blocks[0], 1, fuse=False)
        self.layer2 = self._make_layer(m * 2, c.num_blocks[1], 2, fuse=False)
        self.layer3 = self._make_layer(m * 4, c.num_blocks[2], 2, fuse=True)
        self.layer4 = self._make_layer(m * 8, c.num_blocks[3], 2, fuse=True)
        self.layer3_ds = nn.Conv2d(m * 4 * e, m * 8 * e, 3, padding=1, stride=2, bias=False)
        self.fuse34 = AFF(m * 8 * e, r=4)
        stats_dim = (c.feat_dim // 8) * m * 8 * e
        self.seg_1 = nn.Linear(stats_dim * 2, c.embedding_size)
        if c.two_emb_layer:
            self.seg_bn_1 = nn.BatchNorm1d(c.embedding_size, affine=False)
            self.seg_2 = nn.Linear(c.embedding_size, c.embedding_size)
        # Exact padded batching: only 3x3 convolutions mix frames in time, so zeroing the padded
        # frames before each of them reproduces the zero padding an unpadded input would see.
        self._lengths: torch.Tensor | None = None
        self._padded = 0
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
                module.register_forward_pre_hook(self._mask_padding)

    def _mask_padding(self, _module: nn.Module, args: tuple) -> tuple | None:
        if self._lengths is None:
            return None
        x = args[0]
        valid = _valid_lengths(self._lengths, self._padded, x.shape[-1])
        mask = torch.arange(x.shape[-1], device=x.device)[None, :] < valid[:, None]
        return (x * mask[:, None, None, :].to(x.dtype),)

    def _make_layer(self, planes: int, blocks: int, stride: int, fuse: bool) -> nn.Sequential:
        c = self.config
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(
                Block(self._in_planes, planes, s, c.base_width, c.scale, c.expansion, fuse)
            )
            self._in_planes = planes * c.expansion
        return nn.Sequential(*layers)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of ``[B, T, F]`` features; ``lengths`` gives valid frames of padded items."""
        x = feats.transpose(1, 2).unsqueeze(1)  # [B, T, F] -> [B, 1, F, T]
        self._lengths, self._padded = lengths, feats.shape[1]
        try:
            x = F.relu(self.bn1(self.conv1(x)))
            out3 = self.layer3(self.layer2(self.layer1(x)))
            out4 = self.layer4(out3)
            fused = self.fuse34(out4, self.layer3_ds(out3))
        finally:
            self._lengths = None
        pooled_lengths = None
        if lengths is not None:
            pooled_lengths = _valid_lengths(lengths, feats.shape[1], fused.shape[-1])
        emb = self.seg_1(statistics_pooling(fused, pooled_lengths))
        if self.config.two_emb_layer:
            emb = self.seg_2(self.seg_bn_1(F.relu(emb)))
        return emb


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the preceding convolution, in place (hooks survive)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    conv.weight = weight
    conv.bias = bias


@torch.no_grad()
def fold_batchnorm(model: ERes2NetV2) -> ERes2NetV2:
    """Inference-only: merge every BatchNorm2d into its convolution (fewer memory passes).

    The state dict of the result no longer has the official layout, so this is applied to a
    loaded model inside the embedder, never before saving. Results equal the unfolded network
    up to float rounding.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    _fold(model.conv1, model.bn1)
    model.bn1 = nn.Identity()
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            _fold(block.conv1, block.bn1)
            block.bn1 = nn.Identity()
            for i, conv in enumerate(block.convs):
                _fold(conv, block.bns[i])
                block.bns[i] = nn.Identity()
            _fold(block.conv3, block.bn3)
            block.bn3 = nn.Identity()
            if len(block.shortcut) == 2:
                _fold(block.shortcut[0], block.shortcut[1])
                block.shortcut[1] = nn.Identity()
            for aff in getattr(block, "fuse_models", []):
                _fold_aff(aff)
    _fold_aff(model.fuse34)
    return model


def _fold_aff(aff: AFF) -> None:
    att = aff.local_att
    _fold(att[0], att[1])
    _fold(att[3], att[4])
    att[1], att[4] = nn.Identity(), nn.Identity()


def _onednn_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return torch.mkldnn_convolution(
        x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
    )


def use_onednn_pointwise(model: nn.Module) -> int:
    """CPU inference: send 1x1 convolutions straight to oneDNN; returns how many.

    PyTorch's CPU dispatcher runs stride-1 1x1 convolutions through its generic
    im2col/GEMM path, which on the 2-core test machine is 2-2.6x slower per call than oneDNN
    (bench/embed.py); ERes2NetV2 spends about half its CPU time in such convolutions. Results
    agree with the default path to float rounding.
    """
    if not (torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")):
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
            module.forward = types.MethodType(_onednn_forward, module)
            count += 1
    return count


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")
_CONV_KEY = re.compile(r"^layer1\.0\.convs\.(\d+)\.weight$")
_REQUIRED = ("conv1.weight", "layer1.0.conv3.weight", "layer1.0.convs.0.weight", "seg_1.weight")


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> ERes2NetV2Config:
    """Recover the constructor arguments of any ERes2NetV2 from its tensor shapes."""
    missing = [k for k in _REQUIRED if k not in state_dict]
    if missing:
        raise InvalidCheckpointError(f"not an ERes2NetV2 state dict (missing {', '.join(missing)})")
    try:
        m = int(state_dict["conv1.weight"].shape[0])
        expansion = int(state_dict["layer1.0.conv3.weight"].shape[0]) // m
        scale = 1 + max(int(g.group(1)) for k in state_dict if (g := _CONV_KEY.match(k)))
        blocks = [0, 0, 0, 0]
        for k in state_dict:
            if g := _BLOCK_KEY.match(k):
                layer, idx = int(g.group(1)), int(g.group(2))
                blocks[layer - 1] = max(blocks[layer - 1], idx + 1)
        widths = {i: int(state_dict[f"layer{i}.0.convs.0.weight"].shape[0]) for i in range(1, 5)}
        base_width = next(
            bw
            for bw in range(1, 1025)
            if all(math.floor(m * 2 ** (i - 1) * bw / 64.0) == w for i, w in widths.items())
        )
        seg_in = int(state_dict["seg_1.weight"].shape[1])
        embedding_size = int(state_dict["seg_1.weight"].shape[0])
        feat_dim = seg_in // (2 * m * 8 * expansion) * 8
    except (KeyError, StopIteration, ValueError, AttributeError, IndexError, ZeroDivisionError):
        raise InvalidCheckpointError(
            "not an ERes2NetV2 state dict (tensor shapes do not fit the architecture)"
        ) from None
    return ERes2NetV2Config(
        m_channels=m,
        base_width=base_width,
        scale=scale,
        expansion=expansion,
        feat_dim=feat_dim,
        embedding_size=embedding_size,
        num_blocks=tuple(blocks),
        two_emb_layer="seg_2.weight" in state_dict,
    )


def build_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> ERes2NetV2:
    """Infer the config, build the network and load the weights strictly (eval mode)."""
    config = infer_config(state_dict)
    model = ERes2NetV2(config)
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise InvalidCheckpointError(
            f"not a loadable ERes2NetV2 state dict ({first[:200]})"
        ) from None
    return model.eval()

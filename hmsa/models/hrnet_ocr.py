"""HRNetV2 + OCR with the hierarchical-attention heads (section 3.1, the trunk of Tables 2-4).

The four raw HRNet branches are upsampled to stride 4 and concatenated (W48: 48+96+192+384 = 720 ch);
the auxiliary head reads them directly; OCR turns them into 512-ch features that feed the semantic
and the attention heads. Outputs are upsampled bilinearly to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hmsa.models.backbones import hrnet_trunk, pad_to_multiple, upsample_crop
from hmsa.models.heads import AuxHead, JointScaleAttention, SegHead, attention_head
from hmsa.models.ocr import OCR


class HRNetOCR(nn.Module):
    def __init__(self, num_classes: int, trunk: str = "hrnet_w48", ocr_mid: int = 512, ocr_key: int = 256,
                 head_mid: int = 256, attention: bool = True, pretrained: bool = False,
                 weights: str | None = None, explicit_scales: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.trunk = hrnet_trunk(trunk, pretrained, weights)
        cat = sum(self.trunk.channels)
        self.aux_head = AuxHead(cat, cat, num_classes)
        self.ocr = OCR(cat, ocr_mid, ocr_key, ocr_mid)
        self.seg_head = SegHead(ocr_mid, head_mid, num_classes)
        # attention=True: the hierarchical head (one sigmoid map per forward), or with explicit_scales
        # Chen et al.'s joint head, which reads the features of every scale at once (multiscale.py).
        explicit = attention and bool(explicit_scales)
        self.attn_head = attention_head(ocr_mid, head_mid) if attention and not explicit else None
        self.scale_attn = JointScaleAttention(ocr_mid, head_mid, tuple(explicit_scales or ())) if explicit else None
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]  # H, W
        x = pad_to_multiple(x, 32)
        feats = self.trunk(x)  # 4 × N×C_i×H/r×W/r, r = 4, 8, 16, 32
        h4 = feats[0].shape[-2:]
        cat = torch.cat([feats[0]] + [F.interpolate(f, size=h4, mode="bilinear", align_corners=False)
                                      for f in feats[1:]], dim=1)  # N×720×H/4×W/4
        aux = self.aux_head(cat)
        ocr = self.ocr(cat, aux)  # N×512×H/4×W/4
        padded = x.shape[-2:]
        out = {"logits": upsample_crop(self.seg_head(ocr), padded, size),
               "aux": upsample_crop(aux, padded, size)}
        if self.attn_head is not None:
            out["attn_logit"] = upsample_crop(self.attn_head(ocr), padded, size)
        # the head input on the unpadded region (stride 4), for the joint scale attention
        out["features"] = ocr[..., : -(-size[0] // 4), : -(-size[1] // 4)]
        return out

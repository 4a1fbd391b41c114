"""Proposal head for dense captioning: ViTDet simple feature pyramid + class-agnostic CenterNet.

From the encoder grid f (B, C, h, w) the pyramid builds levels at ``scales`` times the grid
resolution (transposed convs up, max-pool down, then 1x1 + 3x3 convs: Li et al. 2022). A
shared CenterNet head predicts per cell an objectness heatmap, an offset of the centre
inside the cell and the box size (Zhou et al. 2019). Each ground-truth box is assigned to
the level where its longer side spans about ``object_cells`` cells. Decoding keeps local
maxima (3x3 max-pool), the top-k over all levels, then NMS (``torchvision.ops``); the
boxes are fed back to the LM as box prompts.

All boxes here are xyxy normalised to [0, 1] of the padded square input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from pixelkit.config import ProposalHeadConfig
from pixelkit.modeling.losses import box_losses, centernet_focal


class LayerNorm2d(nn.GroupNorm):
    """LayerNorm over channels of an NCHW map (GroupNorm with one group)."""

    def __init__(self, channels: int) -> None:
        super().__init__(1, channels)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's pyramid from a single-scale map.

    Args:
        in_channels: C of f.
        width: output channels of every level.
        scales: upsampling factors (powers of two; < 1 means downsampling).
    """

    def __init__(self, in_channels: int, width: int, scales: list[float]) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        for s in scales:
            layers: list[nn.Module] = []
            c = in_channels
            n = int(round(math.log2(s)))
            for i in range(max(n, 0)):  # 2x transposed conv per octave up
                out = max(c // 2, width)
                layers += [nn.ConvTranspose2d(c, out, 2, stride=2)]
                if i < n - 1:
                    layers += [LayerNorm2d(out), nn.GELU()]
                c = out
            layers += [nn.MaxPool2d(2) for _ in range(max(-n, 0))]
            layers += [nn.Conv2d(c, width, 1), LayerNorm2d(width),
                       nn.Conv2d(width, width, 3, padding=1), LayerNorm2d(width)]
            self.levels.append(nn.Sequential(*layers))

    def forward(self, f: torch.Tensor) -> list[torch.Tensor]:
        """f (B, C, h, w) -> [(B, width, h * s, w * s) for s in scales]."""
        return [level(f) for level in self.levels]


class ProposalHead(nn.Module):
    """Simple feature pyramid + shared CenterNet head (heatmap, offset, size).

    Args:
        in_channels: C of the encoder grid.
        cfg: head config.
    """

    def __init__(self, in_channels: int, cfg: ProposalHeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pyramid = SimpleFeaturePyramid(in_channels, cfg.width, cfg.scales)
        tower: list[nn.Module] = []
        for _ in range(cfg.num_convs):
            tower += [nn.Conv2d(cfg.width, cfg.width, 3, padding=1), LayerNorm2d(cfg.width), nn.ReLU()]
        self.tower = nn.Sequential(*tower)
        self.heatmap = nn.Conv2d(cfg.width, 1, 3, padding=1)
        self.offset = nn.Conv2d(cfg.width, 2, 3, padding=1)   # centre inside its cell, sigmoid
        self.size = nn.Conv2d(cfg.width, 2, 3, padding=1)     # log of (w, h) / reference size
        nn.init.constant_(self.heatmap.bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01

    def forward(self, f: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Raw per-level maps.

        Args:
            f: (B, C, h, w) encoder features.

        Returns:
            Per level: ``heatmap`` (B, 1, H, W) logits, ``boxes`` (B, H, W, 4) decoded xyxy.
        """
        outs = []
        for level in self.pyramid(f):
            t = self.tower(level)
            B, _, H, W = t.shape
            offset = torch.sigmoid(self.offset(t).float())                    # (B, 2, H, W)
            ref = self.cfg.object_cells / max(H, W)                            # normalised side
            wh = torch.exp(self.size(t).float().clamp(-6, 6)) * ref            # (B, 2, H, W)
            ys = torch.arange(H, device=t.device, dtype=torch.float32)
            xs = torch.arange(W, device=t.device, dtype=torch.float32)
            cy = (ys[:, None] + offset[:, 1]) / H
            cx = (xs[None, :] + offset[:, 0]) / W
            boxes = torch.stack([cx - wh[:, 0] / 2, cy - wh[:, 1] / 2,
                                 cx + wh[:, 0] / 2, cy + wh[:, 1] / 2], dim=-1)  # (B, H, W, 4)
            outs.append({"heatmap": self.heatmap(t), "boxes": boxes})
        return outs

    # ------------------------------------------------------------------ training
    def assign_level(self, boxes: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Level index per box: where its longer side spans ~``object_cells`` cells. (N,)"""
        side = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1).clamp(min=1e-6)     # (N,)
        cells = side[:, None] * torch.tensor(sizes, device=boxes.device, dtype=side.dtype)
        return (cells / self.cfg.object_cells).log2().abs().argmin(dim=1)

    def loss(self, outs: list[dict[str, torch.Tensor]], gt_boxes: list[torch.Tensor]
             ) -> dict[str, torch.Tensor]:
        """CenterNet losses.

        Args:
            outs: :meth:`forward` output.
            gt_boxes: per image (N_i, 4) xyxy normalised boxes.

        Returns:
            ``heatmap`` (focal), ``box_l1`` and ``giou`` at the assigned centre cells.
        """
        sizes = [o["heatmap"].shape[-1] for o in outs]
        focal, pred_boxes, tgt_boxes, num_pos = 0.0, [], [], 0
        targets = [torch.zeros_like(o["heatmap"][:, 0], dtype=torch.float32) for o in outs]
        for b, boxes in enumerate(gt_boxes):
            if boxes.numel() == 0:
                continue
            boxes = boxes.float()
            levels = self.assign_level(boxes, sizes)
            for box, lvl in zip(boxes, levels.tolist()):
                H = W = sizes[lvl]
                cx, cy = (box[0] + box[2]) / 2 * W, (box[1] + box[3]) / 2 * H
                ix, iy = int(cx.clamp(0, W - 1e-3)), int(cy.clamp(0, H - 1e-3))
                # Elliptical Gaussian: sigma = box side in cells / 6 (at least half a cell).
                sx = max(float((box[2] - box[0]) * W) / 6, 0.5)
                sy = max(float((box[3] - box[1]) * H) / 6, 0.5)
                ys = torch.arange(H, device=boxes.device, dtype=torch.float32)[:, None]
                xs = torch.arange(W, device=boxes.device, dtype=torch.float32)[None, :]
                g = torch.exp(-((xs - ix) ** 2) / (2 * sx**2) - ((ys - iy) ** 2) / (2 * sy**2))
                targets[lvl][b] = torch.maximum(targets[lvl][b], g)
                pred_boxes.append(outs[lvl]["boxes"][b, iy, ix])
                tgt_boxes.append(box)
                num_pos += 1
        for o, t in zip(outs, targets):
            focal = focal + centernet_focal(o["heatmap"][:, 0], t, num_pos)
        if pred_boxes:
            l1, giou = box_losses(torch.stack(pred_boxes), torch.stack(tgt_boxes))
        else:  # no objects in the batch: zero, but keep the graph connected for DDP
            l1 = giou = sum(o["boxes"].sum() * 0.0 for o in outs)
        return {"heatmap": focal, "box_l1": l1, "giou": giou}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def decode(self, outs: list[dict[str, torch.Tensor]], score_threshold: float | None = None,
               max_detections: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Peaks -> top-k -> NMS.

        Returns:
            Per image ``boxes`` (N, 4) xyxy in [0, 1] and ``scores`` (N,), best first.
        """
        thr = self.cfg.score_threshold if score_threshold is None else score_threshold
        keep_n = self.cfg.max_detections if max_detections is None else max_detections
        scores, boxes = [], []
        for o in outs:
            heat = torch.sigmoid(o["heatmap"].float())                          # (B, 1, H, W)
            peak = heat == F.max_pool2d(heat, 3, stride=1, padding=1)
            scores.append((heat * peak).flatten(1))                             # (B, HW)
            boxes.append(o["boxes"].flatten(1, 2))                              # (B, HW, 4)
        scores_all, boxes_all = torch.cat(scores, 1), torch.cat(boxes, 1)
        k = min(self.cfg.topk, scores_all.shape[1])
        top, idx = scores_all.topk(k, dim=1)
        results = []
        for b in range(scores_all.shape[0]):
            s, bx = top[b], boxes_all[b, idx[b]].clamp(0, 1)
            ok = (s > thr) & (bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1])
            s, bx = s[ok], bx[ok]
            keep = batched_nms(bx, s, torch.zeros_like(s, dtype=torch.long), self.cfg.nms_iou)
            keep = keep[:keep_n]
            results.append({"boxes": bx[keep], "scores": s[keep]})
        return results

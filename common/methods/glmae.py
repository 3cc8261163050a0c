"""GL-MAE: global and local masked views of a ViT MAE, guided by a momentum teacher on complete global views.

Zhuang et al., "Advancing Volumetric Medical Image Segmentation via Global-Local Masked Autoencoder" (GL-MAE).
One step on a batch of ``B`` volumes, each with ``p`` global and ``q`` local views
(:class:`~common.transforms.views.RandGlobalLocalViewsd`):

1. the momentum teacher (an EMA of the student encoder and head, no gradient) embeds the *complete* global
   views: the anchors (the EMA is eq. 5, the projection of their cls tokens eq. 6);
2. every view is masked (ratio 0.6) and reconstructed by the MAE of :class:`~common.methods.mae.MAE3D`:
   L_R^local and L_R^global, per-patch normalised MSE on the masked tokens (eq. 3-4);
3. the student's cls token of every masked view goes through a projection head ``g_s`` (MLP + GELU, ``K`` = 512);
4. global-to-global and global-to-local consistency: cross-entropy ``H(P_t, P_s)`` of the sharpened teacher
   distribution (centred in DINO's form) and the student's (the softmax with temperature is eq. 7), over every
   (masked view, anchor) pair of a volume (eq. 8-10, :class:`~common.losses.GlobalGuidedConsistencyLoss`); the
   centre then moves towards the teacher's batch mean;
5. ``L = L_R^local + b1 L_R^global + b2 L_C^gg + b3 L_C^gl`` with all ``b = 1`` (eq. 11).

:class:`common.engine.MomentumTeacher` calls :meth:`GLMAE.update_teacher` after every optimizer step.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from common.losses import GlobalGuidedConsistencyLoss
from common.methods.mae import MAE3D
from common.methods.momentum import momentum_update
from common.transforms.views import GLOBAL_VIEWS, LOCAL_VIEWS


def projection_head(in_features: int, out_features: int = 512, hidden_features: int = 2048) -> nn.Sequential:
    """``g``: a 3-layer MLP with GELU (DINO's head without its bottleneck and weight-normalised last layer)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden_features),
        nn.GELU(),
        nn.Linear(hidden_features, hidden_features),
        nn.GELU(),
        nn.Linear(hidden_features, out_features),
    )


class GLMAE(MAE3D):
    """GL-MAE pre-training.

    Args:
        in_channels: image channels.
        img_size: local view size (96^3); the position embedding is learnt for it and interpolated for the
            global views (160^3).
        encoder, decoder_width, decoder_depth, decoder_heads: as :class:`MAE3D`.
        mask_ratio: fraction of masked tokens of every view (0.6, the paper's best).
        num_prototypes: ``K``, the projection width (512).
        head_hidden: hidden width of the projection heads (2048).
        student_temperature, teacher_temperature, center_momentum: :class:`GlobalGuidedConsistencyLoss`.
        global_weight, global_global_weight, global_local_weight: ``b1``, ``b2``, ``b3`` of eq. 11 (all 1).

    ``forward({"global_views": (B, p, C, *G), "local_views": (B, q, C, *L)})`` returns ``loss``,
    ``loss/recon_local``, ``loss/recon_global``, ``loss/consistency_gg``, ``loss/consistency_gl``, and with
    ``images=True`` also ``images`` (input, masked and reconstruction of the first global and the first local view).
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: Sequence[int] = (96, 96, 96),
        encoder: Mapping | None = None,
        decoder_width: int = 384,
        decoder_depth: int = 8,
        decoder_heads: int = 12,
        mask_ratio: float = 0.6,
        num_prototypes: int = 512,
        head_hidden: int = 2048,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        center_momentum: float = 0.9,
        global_weight: float = 1.0,
        global_global_weight: float = 1.0,
        global_local_weight: float = 1.0,
    ) -> None:
        super().__init__(in_channels, img_size, encoder, decoder_width, decoder_depth, decoder_heads, mask_ratio)
        self.head = projection_head(self.encoder.hidden_size, num_prototypes, head_hidden)
        self.teacher_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.consistency = GlobalGuidedConsistencyLoss(num_prototypes, student_temperature, teacher_temperature, center_momentum)
        self.weights = {"global": global_weight, "gg": global_global_weight, "gl": global_local_weight}

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher <- m * teacher + (1 - m) * student`` for the encoder and the projection head (eq. 5)."""
        momentum_update((self.teacher_encoder, self.teacher_head), (self.encoder, self.head), momentum)

    @torch.no_grad()
    def anchors(self, global_views: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``(N, K)`` of complete global views ``(N, C, *G)``: ``g_t`` of the cls token."""
        return self.teacher_head(self.teacher_encoder(global_views)[:, 0])

    def _student(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 2 and 3 for views ``(B, V, C, *S)``: the views flattened ``(B V, C, *S)``, their masks ``(B V, 1,
        *S/16)``, the reconstructions ``(B V, C, *S)`` and the student logits ``(B, V, K)``."""
        flat = views.flatten(0, 1)
        visible = self.mask(flat)
        prediction, cls = self.encode_decode(flat, visible)
        return flat, visible, prediction, self.head(cls).view(*views.shape[:2], -1)

    def forward(self, batch: dict, images: bool = False) -> dict:
        """The losses of the docstring above for the batch's views; with ``images``, also the first global and local
        view's ``"images"``, which only a snapshot needs."""
        global_views, local_views = batch[GLOBAL_VIEWS], batch[LOCAL_VIEWS]  # (B, p, C, *G), (B, q, C, *L)
        # 1. anchors: teacher logits of the complete global views, (B, p, K), no gradient.
        teacher = self.anchors(global_views.flatten(0, 1)).view(*global_views.shape[:2], -1)
        result, shown_views = {}, {}
        for kind, views in (("global", global_views), ("local", local_views)):
            # 2.-3. mask, reconstruct and embed every view: prediction (B V, C, *S), logits (B, V, K).
            flat, visible, prediction, logits = self._student(views)
            result[f"loss/recon_{kind}"] = self.reconstruction_loss(prediction, flat, visible)
            # 4. consistency of each masked view with every global anchor of its volume, a scalar.
            result[f"loss/consistency_g{kind[0]}"] = self.consistency(logits, teacher)
            if images:
                shown = self.images(flat[:1], prediction[:1], visible[:1])
                shown_views.update({f"{kind}_{name}": shown[name] for name in ("input", "masked", "reconstruction")})
        if self.training:
            self.consistency.update_center(teacher)
        # 5. eq. 11.
        result["loss"] = (
            result["loss/recon_local"]
            + self.weights["global"] * result["loss/recon_global"]
            + self.weights["gg"] * result["loss/consistency_gg"]
            + self.weights["gl"] * result["loss/consistency_gl"]
        )
        result.update({key: value.detach() for key, value in result.items() if key != "loss"})
        if images:
            result["images"] = shown_views
        return result

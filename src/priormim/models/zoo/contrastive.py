"""Two-view joint-embedding baselines with an EMA teacher: MoCo v3 and DINO.

Both ignore the engine's mask: each step makes two augmented views of the batch with
:func:`~priormim.models.zoo.augment.random_view` (batched tensor ops) and compares a student
branch with an exponential-moving-average teacher (:class:`~priormim.models.zoo.base.EMATeacher`)
that the engine updates after every optimiser step through :meth:`after_optimizer_step`.
The student's ``encoder`` representation is the timm ViT's pooled output (class token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from priormim.models.zoo.augment import ViewConfig, random_view
from priormim.models.zoo.base import EMATeacher, PretrainOutput, ZooPretrainer, cosine_momentum, gather_batch

__all__ = ["DINO", "DINOHead", "MoCoV3", "dino_loss", "info_nce"]


def _view_config(view: dict | None) -> ViewConfig:
    try:
        cfg = ViewConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in (view or {}).items()})
    except TypeError as exc:
        raise ValueError(f"view: {exc}") from exc
    return cfg


def _dist_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _mlp(num_layers: int, in_dim: int, hidden: int, out_dim: int, *, last_bn: bool) -> nn.Sequential:
    """MoCo v3's MLP: (Linear-BN-ReLU) x (n-1), Linear, optional affine-free BN at the end."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d_in = in_dim if i == 0 else hidden
        d_out = out_dim if i == num_layers - 1 else hidden
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


def info_nce(q: Tensor, k: Tensor, temperature: float) -> Tensor:
    """MoCo v3's contrastive loss ``2T * CE(q k^T / T, positives on the diagonal)``.

    q: ``[B, d]`` queries (this process); k: ``[B, d]`` keys (gathered over processes in a
    distributed run, so the negatives are the whole global batch). Returns a scalar.
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(gather_batch(k.float()), dim=1)
    logits = q @ k.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * _dist_rank()
    return F.cross_entropy(logits, labels) * (2 * temperature)


class MoCoV3(ZooPretrainer):
    """MoCo v3 (Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision
    Transformers", ICCV 2021).

    Student: encoder -> projector (3-layer MLP with BatchNorm) -> predictor (2-layer MLP);
    momentum teacher: EMA copies of encoder and projector, momentum ``momentum`` -> 1 on a
    cosine schedule. Loss: symmetrised InfoNCE ``ctr(q1, k2) + ctr(q2, k1)`` at temperature 0.2.

    Differences here: grey-level augmentations (resized crop, flip, brightness/contrast, blur;
    no colour jitter/solarisation, same strengths for both views); smaller MLPs by default
    (``hidden_dim`` 1024 instead of 4096); patch embedding not frozen. Needs batches of >= 2
    images (BatchNorm).

    Args:
        hidden_dim, out_dim: MLP widths. temperature: InfoNCE temperature.
        momentum: initial teacher momentum. view: :class:`ViewConfig` overrides.
        encoder_name, img_size, in_chans, encoder_kwargs, drop_path_rate: as MAE's.

    Shapes: images ``[B, C, H, W]``; the mask is ignored.
    """

    def __init__(
        self,
        *,
        encoder_name: str = "vit_tiny_patch16_224",
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 1,
        encoder_kwargs: dict | None = None,
        drop_path_rate: float = 0.0,
        hidden_dim: int = 1024,
        out_dim: int = 256,
        temperature: float = 0.2,
        momentum: float = 0.99,
        view: dict | None = None,
        encoder_init: str = "sincos",  # MoCo v3's ViT: fixed 2-D sin-cos position embedding
    ) -> None:
        super().__init__(encoder_name=encoder_name, img_size=img_size, in_chans=in_chans,
                         encoder_kwargs=encoder_kwargs, drop_path_rate=drop_path_rate,
                         encoder_init=encoder_init)
        if not temperature > 0 or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"need temperature > 0 and momentum in [0, 1], got {temperature}, {momentum}")
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.view_cfg = _view_config(view)
        self.projector = _mlp(3, self.embed_dim, hidden_dim, out_dim, last_bn=True)
        self.predictor = _mlp(2, out_dim, hidden_dim, out_dim, last_bn=False)
        self.teacher = EMATeacher(self.encoder, self.projector)

    def forward(self, images: Tensor, mask: Tensor | None = None, *, progress: float = 0.0,
                scores: Tensor | None = None) -> PretrainOutput:
        if images.shape[0] < 2:
            raise ValueError("MoCo v3 needs at least 2 images per batch (BatchNorm, negatives)")
        v1, v2 = random_view(images, self.view_cfg), random_view(images, self.view_cfg)
        q1 = self.predictor(self.projector(self.encoder(v1)))
        q2 = self.predictor(self.projector(self.encoder(v2)))
        with torch.no_grad():
            t_enc, t_proj = self.teacher[0], self.teacher[1]
            k1, k2 = t_proj(t_enc(v1)), t_proj(t_enc(v2))
        loss = info_nce(q1, k2, self.temperature) + info_nce(q2, k1, self.temperature)
        return PretrainOutput(loss=loss, terms={"loss_ctr": loss})

    def after_optimizer_step(self, progress: float) -> None:
        """EMA update of the teacher after ``optimizer.step()``."""
        self.teacher.update(self.encoder, self.projector, momentum=cosine_momentum(progress, self.momentum))


# -- DINO ----------------------------------------------------------------------------------------
class DINOHead(nn.Module):
    """DINO's projection head: MLP (GELU) to a bottleneck, L2 normalisation, then a
    weight-normalised linear layer (norm fixed to 1) onto ``out_dim`` prototypes.

    ``[B, in_dim]`` -> ``[B, out_dim]`` logits (cosine similarities to the prototypes).
    """

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int = 1024, bottleneck_dim: int = 256,
                 num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(max(num_layers, 1) - 1):
            layers += [nn.Linear(d, hidden_dim), nn.GELU()]
            d = hidden_dim
        layers.append(nn.Linear(d, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.prototypes, dim=1))


def dino_loss(student: list[Tensor], teacher: list[Tensor], center: Tensor, *, student_temp: float,
              teacher_temp: float) -> Tensor:
    """Cross-entropy between the centred, sharpened teacher and the student over every pair
    of *different* views: ``mean_{a != b} sum_k -softmax((t_a - c) / T_t)_k log_softmax(s_b / T_s)_k``.

    student, teacher: lists of ``[B, K]`` logits, one per view; center: ``[1, K]``.
    """
    t_probs = [F.softmax((t.float() - center) / teacher_temp, dim=-1) for t in teacher]
    s_logp = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    total, n = 0.0, 0
    for a, tp in enumerate(t_probs):
        for b, sl in enumerate(s_logp):
            if a != b:
                total = total + (-tp * sl).sum(dim=-1).mean()
                n += 1
    return total / max(n, 1)


class DINO(ZooPretrainer):
    """DINO (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021).

    Student: encoder -> :class:`DINOHead`; teacher: EMA copies of both (momentum 0.996 -> 1,
    cosine). The teacher's output is centred (a running mean ``center``, momentum 0.9, averaged
    over processes) and sharpened (``teacher_temp`` 0.04 vs ``student_temp`` 0.1); the loss is
    :func:`dino_loss` over the two views.

    Differences here: two global views only (no multi-crop local views), grey-level
    augmentations, no teacher-temperature warm-up, the last layer is not frozen in the first
    epoch, and a smaller head by default (``out_dim`` 4096, ``hidden_dim`` 1024 instead of
    65536 / 2048).

    Args:
        out_dim, hidden_dim, bottleneck_dim: head sizes. student_temp, teacher_temp,
        center_momentum, momentum: DINO's temperatures and momenta. view: :class:`ViewConfig`
        overrides. encoder_name, img_size, in_chans, encoder_kwargs, drop_path_rate: as MAE's.

    Shapes: images ``[B, C, H, W]``; the mask is ignored.
    """

    def __init__(
        self,
        *,
        encoder_name: str = "vit_tiny_patch16_224",
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 1,
        encoder_kwargs: dict | None = None,
        drop_path_rate: float = 0.0,
        out_dim: int = 4096,
        hidden_dim: int = 1024,
        bottleneck_dim: int = 256,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
        view: dict | None = None,
    ) -> None:
        super().__init__(encoder_name=encoder_name, img_size=img_size, in_chans=in_chans,
                         encoder_kwargs=encoder_kwargs, drop_path_rate=drop_path_rate)
        if not (student_temp > 0 and teacher_temp > 0):
            raise ValueError("temperatures must be > 0")
        if not (0.0 <= center_momentum <= 1.0 and 0.0 <= momentum <= 1.0):
            raise ValueError("momenta must be in [0, 1]")
        self.student_temp, self.teacher_temp = float(student_temp), float(teacher_temp)
        self.center_momentum, self.momentum = float(center_momentum), float(momentum)
        self.view_cfg = _view_config(view)
        self.head = DINOHead(self.embed_dim, out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim)
        self.teacher = EMATeacher(self.encoder, self.head)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, images: Tensor, mask: Tensor | None = None, *, progress: float = 0.0,
                scores: Tensor | None = None) -> PretrainOutput:
        views = [random_view(images, self.view_cfg), random_view(images, self.view_cfg)]
        student = [self.head(self.encoder(v)) for v in views]
        with torch.no_grad():
            t_enc, t_head = self.teacher[0], self.teacher[1]
            teacher = [t_head(t_enc(v)).float() for v in views]
        loss = dino_loss(student, teacher, self.center, student_temp=self.student_temp, teacher_temp=self.teacher_temp)
        self._update_center(torch.cat(teacher))
        return PretrainOutput(loss=loss, terms={"loss_dino": loss})

    @torch.no_grad()
    def _update_center(self, teacher_out: Tensor) -> None:
        batch_sum = teacher_out.sum(dim=0, keepdim=True)
        count = torch.tensor([float(teacher_out.shape[0])], device=teacher_out.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_sum)
            torch.distributed.all_reduce(count)
        m = self.center_momentum
        self.center.mul_(m).add_(batch_sum / count, alpha=1 - m)

    def after_optimizer_step(self, progress: float) -> None:
        """EMA update of the teacher after ``optimizer.step()``."""
        self.teacher.update(self.encoder, self.head, momentum=cosine_momentum(progress, self.momentum))

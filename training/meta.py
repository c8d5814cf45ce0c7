"""The CTMWA training step (DESIGN.md section 3): support step with fast weights, query step, outer step.

One `MetaWeightTrainer.step` per training batch:

1. support: loss_s on the training batch through θ, with the weight nets' w_t, w_v attached to the graph;
   θ' = θ − inner_lr · ∇θ loss_s, with create_graph=True so θ' is a function of the weight nets' parameters φ.
2. query: CE(m, label) + CE(t, t_label) + CE(v, v_label) on a query batch through θ' (`torch.func.functional_call`);
   its gradient reaches φ through θ' alone; Adam steps the weight nets, nothing else.
3. outer: loss_s again through θ, with weights from the updated weight nets (detached); clip each backbone
   module's gradient norm, SGD steps the backbone, nothing else.

`mode="late_fusion"` is the ablation: no meta step, the weight nets stay untouched and every unimodal loss counts 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ctmwa_training._config import config_from_dict
from ctmwa_training.data import FeatureBatch
from ctmwa_training.errors import ConfigError
from ctmwa_training.model import BACKBONE_MODULES, CTMWA, CTMWAOutput

logger = logging.getLogger(__name__)

MODES = ("meta", "late_fusion")


@dataclass(frozen=True)
class TrainConfig:
    """How CTMWA is trained; defaults are the reference's TumEmo script except where noted."""

    mode: str = "meta"  # "meta": CTMWA's meta weight step; "late_fusion": the ablation without it
    lr: float = 5e-4  # backbone SGD learning rate
    inner_lr: float = 3e-3  # fast-weight step size of the support step
    wnet_lr: float = 5e-4  # weight-net Adam learning rate
    momentum: float = 0.9  # backbone SGD momentum
    weight_decay: float = 2e-4  # L2 weight decay of both optimizers
    wnet_betas: tuple[float, float] = (0.5, 0.999)  # Adam betas of the weight nets
    lambda_ti: float = 0.2  # weight of L1(image, txt2img(t))
    lambda_it: float = 2.0  # weight of L1(t, img2txt(image))
    lambda_tit: float = 0.05  # weight of the text cycle L1(t, img2txt(txt2img(t)))
    lambda_iti: float = 0.05  # weight of the image cycle L1(image, txt2img(img2txt(image)))
    clip_grad_norm: float = 2.0  # max gradient norm per backbone module in the outer step
    batch_size: int = 32  # training and query batch size
    epochs: int = 20  # training epochs; the best-validation epoch is kept (the reference keeps none)
    seed: int = 1111  # seeds init, dropout and shuffling (the query set is the features file's `query` column)
    lr_decay: bool = (
        False  # linear decay to zero over the second half of the epochs (the reference builds it but never steps it)
    )
    unimodal_labels: bool | None = None  # None: ask the features file; False: the query step uses the multimodal label
    class_bias: str = (
        "valid_f1"  # "valid_f1": per-class logit bias chosen on the valid split (ctmwa_training.class_bias); "none"
    )
    probe_blend: str = "valid_f1"  # "valid_f1": blend a linear probe into the answer where the valid split gains (ctmwa_training.probe); "none"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"TrainConfig.mode = {self.mode!r} is not one of {list(MODES)}")
        for name in ("lr", "inner_lr", "wnet_lr", "clip_grad_norm"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"TrainConfig.{name} = {getattr(self, name)} must be positive")
        for name in ("lambda_ti", "lambda_it", "lambda_tit", "lambda_iti", "weight_decay", "momentum"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name} = {getattr(self, name)} must not be negative")
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError(
                f"TrainConfig batch_size = {self.batch_size}, epochs = {self.epochs}: both must be at least 1"
            )
        if self.unimodal_labels not in (None, True, False):
            raise ConfigError(f"TrainConfig.unimodal_labels = {self.unimodal_labels!r} must be true, false or null")
        for name in ("class_bias", "probe_blend"):
            if getattr(self, name) not in ("none", "valid_f1"):
                raise ConfigError(f"TrainConfig.{name} = {getattr(self, name)!r} is not one of ['none', 'valid_f1']")
        if len(self.wnet_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.wnet_betas):
            raise ConfigError(f"TrainConfig.wnet_betas = {self.wnet_betas} must be two numbers in [0, 1)")

    @classmethod
    def from_dict(cls, data: dict, where: str = "training config") -> TrainConfig:
        """Build from a JSON object; unknown keys are an error naming them."""
        if isinstance(data, dict) and "query_fraction" in data:
            raise ConfigError(
                f"{where}: TrainConfig.query_fraction = {data['query_fraction']!r} is not a training setting: training "
                "uses the query set marked in the features file's `query` column; size it with "
                "`ctmwa-train prepare --query-fraction`"
            )
        return config_from_dict(cls, data, where)


@dataclass
class StepLosses:
    """Scalar losses of one step, for logging."""

    support: float  # loss_s on the training batch through θ (nan in late-fusion mode)
    query: float  # query loss through θ' (nan in late-fusion mode)
    outer: float  # loss on the training batch through θ after the weight-net update
    text_weight: float  # mean w_t of the outer step
    image_weight: float  # mean w_v of the outer step


def run_model(
    model: CTMWA, batch: FeatureBatch, label: torch.Tensor | None = None, params: dict | None = None
) -> CTMWAOutput:
    """Forward a batch, through `params` (fast weights, by state-dict name) where given."""
    args = (batch.text, batch.image, batch.has_text, batch.has_image)
    if params is None:
        return model(*args, label=label)
    return functional_call(model, params, args, {"label": label})


def _masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Mean |a - b| over the rows where both sides are real; nn.L1Loss when every row is.
    m = mask.to(a.dtype)[:, None]  # (N, 1)
    return ((a - b).abs() * m).sum() / (m.sum().clamp(min=1.0) * a.shape[1])


def translation_loss(out: CTMWAOutput, batch: FeatureBatch, config: TrainConfig) -> torch.Tensor:
    """λ-weighted L1 translation and cycle terms; a term skips rows where one of its sides was substituted."""
    both = batch.has_text & batch.has_image
    return (
        _masked_l1(out.t, out.tit, batch.has_text) * config.lambda_tit
        + _masked_l1(batch.image, out.iti, batch.has_image) * config.lambda_iti
        + _masked_l1(out.t, out.it, both) * config.lambda_it
        + _masked_l1(batch.image, out.ti, both) * config.lambda_ti
    )


def weighted_loss(
    out: CTMWAOutput, batch: FeatureBatch, config: TrainConfig, w_t: torch.Tensor, w_v: torch.Tensor
) -> torch.Tensor:
    """loss_s: translation terms + mean(CE_m) + mean(CE_t · w_t) + mean(CE_v · w_v), all against the multimodal label."""
    ce_m = F.cross_entropy(out.logits_m, batch.label, reduction="none")  # (N,)
    ce_t = F.cross_entropy(out.logits_t, batch.label, reduction="none")  # (N,)
    ce_v = F.cross_entropy(out.logits_v, batch.label, reduction="none")  # (N,)
    return translation_loss(out, batch, config) + ce_m.mean() + (ce_t * w_t).mean() + (ce_v * w_v).mean()


def query_loss(out: CTMWAOutput, batch: FeatureBatch) -> torch.Tensor:
    """CE(m, label) + CE(t, t_label) + CE(v, v_label)."""
    return (
        F.cross_entropy(out.logits_m, batch.label)
        + F.cross_entropy(out.logits_t, batch.t_label)
        + F.cross_entropy(out.logits_v, batch.v_label)
    )


def fast_weights(model: CTMWA, loss: torch.Tensor, inner_lr: float) -> dict[str, torch.Tensor]:
    """θ' = θ − inner_lr · ∇θ loss over the backbone, differentiable (create_graph) so θ' carries the weight nets' graph."""
    params = model.backbone_parameters()
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
    return {name: p if g is None else p - inner_lr * g for (name, p), g in zip(params.items(), grads)}


class MetaWeightTrainer:
    """Owns the two optimizers and runs one training step per batch (meta or late fusion)."""

    def __init__(self, model: CTMWA, config: TrainConfig):
        self.model = model
        self.config = config
        # One param group per backbone module, as the reference builds it.
        self.backbone_optimizer = torch.optim.SGD(
            [{"params": list(getattr(model, m).parameters())} for m in BACKBONE_MODULES],
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.wnet_optimizer = torch.optim.Adam(
            list(model.weight_net_parameters().values()),
            lr=config.wnet_lr,
            betas=config.wnet_betas,
            weight_decay=config.weight_decay,
        )
        self._base_lrs = (config.lr, config.wnet_lr)

    def support_step(self, batch: FeatureBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Step 1: (θ', loss_s) from the training batch, w from the weight nets still in the graph."""
        out = run_model(self.model, batch, label=batch.label)
        loss = weighted_loss(out, batch, self.config, out.text_weight, out.image_weight)
        return fast_weights(self.model, loss, self.config.inner_lr), loss

    def query_step(self, fast: dict[str, torch.Tensor], query: FeatureBatch) -> torch.Tensor:
        """Step 2: query loss through θ'; its gradient updates the weight nets alone."""
        out = run_model(self.model, query, label=query.label, params=fast)
        loss = query_loss(out, query)
        wnet = list(self.model.weight_net_parameters().values())
        grads = torch.autograd.grad(loss, wnet)
        for p, g in zip(wnet, grads):
            p.grad = g
        self.wnet_optimizer.step()
        self.wnet_optimizer.zero_grad(set_to_none=True)
        return loss

    def outer_step(self, batch: FeatureBatch, weighted: bool = True) -> tuple[torch.Tensor, CTMWAOutput]:
        """Step 3: loss_s through θ with the (updated, detached) weights; clipped SGD on the backbone alone."""
        out = run_model(self.model, batch, label=batch.label)
        if weighted:
            w_t, w_v = out.text_weight.detach(), out.image_weight.detach()
        else:
            w_t = w_v = torch.ones_like(out.text_weight)
        loss = weighted_loss(out, batch, self.config, w_t, w_v)
        self.backbone_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for m in BACKBONE_MODULES:
            torch.nn.utils.clip_grad_norm_(getattr(self.model, m).parameters(), self.config.clip_grad_norm)
        self.backbone_optimizer.step()
        return loss, out

    def step(self, batch: FeatureBatch, query: FeatureBatch | None) -> StepLosses:
        """One training step on `batch` (and `query` in meta mode)."""
        nan = float("nan")
        if self.config.mode == "meta":
            if query is None:
                raise ValueError("meta mode needs a query batch every step")
            fast, support = self.support_step(batch)
            q = self.query_step(fast, query)
            del fast
            outer, out = self.outer_step(batch, weighted=True)
            support_value, query_value = support.item(), q.item()
        else:
            outer, out = self.outer_step(batch, weighted=False)
            support_value = query_value = nan
        return StepLosses(
            support=support_value,
            query=query_value,
            outer=outer.item(),
            text_weight=out.text_weight.mean().item() if self.config.mode == "meta" else nan,
            image_weight=out.image_weight.mean().item() if self.config.mode == "meta" else nan,
        )

    def end_epoch(self, epoch: int) -> None:
        """Set the optional decay's rate for epoch `epoch` + 1: constant for the first half of the epochs, then
        linear, one step per epoch, reaching zero just after the last."""
        if not self.config.lr_decay:
            return
        epochs, upcoming = self.config.epochs, epoch + 1
        hold = epochs // 2
        factor = 1.0 if upcoming <= hold else max(0.0, (epochs - upcoming + 1) / (epochs - hold + 1))
        for optimizer, base in zip((self.backbone_optimizer, self.wnet_optimizer), self._base_lrs):
            for group in optimizer.param_groups:
                group["lr"] = base * factor
        logger.debug("lr factor %.3f after epoch %d", factor, epoch)

"""The CTMWA model (Crossmodal Translation based Meta Weight Adaption), as in DESIGN.md section 3.

Reading order follows the paper and the reference code: a text encoder, two crossmodal translators
(`txt2img`, `img2txt`), two necks over [own modality, translated modality], a concatenation fusion, three
classifiers (multimodal `m_c`, text `t_c`, image `v_c`) and two meta weight nets that say how much each
unimodal loss counts. Missing modalities are filled in by the translators (DESIGN.md section 4).

The checkpoint is a folder: `model.safetensors` (the state dict) and `config.json` (this model's config plus
whatever the trainer adds: training config, label names). No pickle.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctmwa_training._config import config_from_dict
from ctmwa_training.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CHECKPOINT_FORMAT_VERSION = 1
# Modules trained by the outer SGD step; the weight nets are trained by the query step alone.
BACKBONE_MODULES = ("text_encoder", "txt2img", "img2txt", "txt_neck", "img_neck", "m_c", "t_c", "v_c")
WEIGHT_NET_MODULES = ("txt_w_net", "img_w_net")
# Modality-evidence classifiers over the raw text and image embeddings, fitted after training by ctmwa_training.evidence;
# neither the outer step nor the query step touches them, and they touch neither.
EVIDENCE_MODULES = ("txt_e_c", "img_e_c")
# (C,) buffer: 1 at the class that carries no sentiment (MVSA's "neutral"), all 0 where the labels have none;
# set by ctmwa_training.evidence, saved with the weights, read by the evidence formula in `CTMWA.forward`.
EVIDENCE_NEUTRAL = "evidence_neutral"
# The probe blend (ctmwa_training.probe): a linear probe of the post label on [text, image, has_text, has_image], fitted
# after training; the answer's logits are logits_m + probe_weight · log_softmax(probe). probe_weight 0 (a (1,)
# buffer) is the paper's model alone; training chooses it on the valid split. Neither training step touches them.
PROBE_MODULE = "probe"
PROBE_WEIGHT = "probe_weight"
INITS = ("kaiming", "pytorch")


@dataclass(frozen=True)
class CTMWAConfig:
    """Shape and regularisation of the CTMWA model; reference defaults (TumEmo script) except `num_classes`."""

    text_dim: int = 512  # Dt: width of the text embedding (CLIP ViT-B/32 projection)
    image_dim: int = 512  # Dv: width of the image embedding
    embed_dim: int = 128  # E: width of each neck's output; the fusion is 2E wide
    num_classes: int = 3  # C: 3 for MVSA (positive, neutral, negative), 7 for TumEmo
    attn_dropout: float = 0.3  # dropout on the translators' attention matrix, training only
    translator_heads: int = 2  # heads of each translator's self-attention (d_k = d_v = output width)
    translator_kernel: int = 5  # conv kernel height over the length-1 sequence; only its centre row meets data
    weight_net_hidden: int = 128  # hidden width of txt_w_net / img_w_net
    leaky_slope: float = 0.1  # negative slope of the LeakyReLU inside necks and classifiers
    init: str = (
        "kaiming"  # "kaiming": the reference's kaiming-normal (fan_in) weights, zero biases; "pytorch": torch defaults
    )

    def __post_init__(self) -> None:
        for name in ("text_dim", "image_dim", "embed_dim", "translator_heads", "weight_net_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"CTMWAConfig.{name} = {getattr(self, name)} must be at least 1")
        if self.num_classes < 2:
            raise ConfigError(f"CTMWAConfig.num_classes = {self.num_classes} must be at least 2 (one per label name)")
        if not 0.0 <= self.attn_dropout < 1.0:
            raise ConfigError(f"CTMWAConfig.attn_dropout = {self.attn_dropout} must be in [0, 1)")
        if self.translator_kernel < 1 or self.translator_kernel % 2 == 0:
            raise ConfigError(f"CTMWAConfig.translator_kernel = {self.translator_kernel} must be odd and positive")
        if self.init not in INITS:
            raise ConfigError(f"CTMWAConfig.init = {self.init!r} is not one of {list(INITS)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model config") -> CTMWAConfig:
        """Build from a JSON object; unknown keys are an error naming them."""
        return config_from_dict(cls, data, where)


@dataclass
class CTMWAOutput:
    """Named outputs of `CTMWA.forward`; N is the batch size."""

    logits_m: torch.Tensor  # (N, C) multimodal classifier (what training's losses read)
    logits: (
        torch.Tensor
    )  # (N, C) the model's answer: logits_m + probe_weight · log_softmax(probe); logits_m while the blend is off
    logits_t: torch.Tensor  # (N, C) text-side classifier
    logits_v: torch.Tensor  # (N, C) image-side classifier
    fused_t: torch.Tensor  # (N, Dt+Dv) [t, ti]
    fused_v: torch.Tensor  # (N, Dt+Dv) [it, image]
    t: torch.Tensor  # (N, Dt) encoded text; img2txt(image) where the text is missing
    ti: torch.Tensor  # (N, Dv) txt2img(t)
    it: torch.Tensor  # (N, Dt) img2txt(image); img2txt(ti) where the image is missing
    tit: torch.Tensor  # (N, Dt) img2txt(ti), cycle term for training
    iti: torch.Tensor  # (N, Dv) txt2img(it), cycle term for training
    text_weight: torch.Tensor  # (N,) txt_w_net output in (0, 1)
    image_weight: torch.Tensor  # (N,) img_w_net output in (0, 1)
    m_t: torch.Tensor  # (N, E) text-side neck output
    m_v: torch.Tensor  # (N, E) image-side neck output
    text_evidence: (
        torch.Tensor
    )  # (N,) how strongly the text alone supports `label` (the given or predicted one); see `evidence`
    image_evidence: torch.Tensor  # (N,) the same for the image alone


@dataclass(frozen=True)
class TranslatorEvalPieces:
    """A translator in eval mode is `o(v(relu(W_c x + b_c)))`; these are its weights, for the ONNX fold."""

    conv_weight: torch.Tensor  # (D_out, D_in) the conv kernel's centre row: the only row that meets data
    conv_bias: torch.Tensor  # (D_out,)
    v_weight: torch.Tensor  # (H*D_out, D_out) value projection; every head's attention weight is exactly 1
    v_bias: torch.Tensor  # (H*D_out,)
    o_weight: torch.Tensor  # (D_out, H*D_out) output projection
    o_bias: torch.Tensor  # (D_out,)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The eval-mode translator from these pieces: (N, D_in) -> (N, D_out)."""
        h = F.relu(F.linear(x, self.conv_weight, self.conv_bias))  # (N, D_out)
        return F.linear(F.linear(h, self.v_weight, self.v_bias), self.o_weight, self.o_bias)  # (N, D_out)

    def merged_output(self) -> tuple[torch.Tensor, torch.Tensor]:
        """o∘v as one affine map (W, b): (D_out, D_out), (D_out,); equal to `apply` up to float rounding."""
        return self.o_weight @ self.v_weight, self.o_weight @ self.v_bias + self.o_bias


class SelfAttention(nn.Module):
    """The reference's multi-head scaled dot-product self-attention (d_k = d_v = d_model), dropout on the attention matrix."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.d_model = d_model
        self.heads = heads
        self.fc_q = nn.Linear(d_model, heads * d_model)
        self.fc_k = nn.Linear(d_model, heads * d_model)
        self.fc_v = nn.Linear(d_model, heads * d_model)
        self.fc_o = nn.Linear(heads * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, D) -> (N, L, D)."""
        n, length, _ = x.shape
        q = self.fc_q(x).view(n, length, self.heads, self.d_model).transpose(1, 2)  # (N, H, L, D)
        k = self.fc_k(x).view(n, length, self.heads, self.d_model).permute(0, 2, 3, 1)  # (N, H, D, L)
        v = self.fc_v(x).view(n, length, self.heads, self.d_model).transpose(1, 2)  # (N, H, L, D)
        att = torch.softmax(q @ k / math.sqrt(self.d_model), dim=-1)  # (N, H, L, L); all ones when L == 1
        att = self.dropout(att)
        out = (att @ v).transpose(1, 2).reshape(n, length, self.heads * self.d_model)  # (N, L, H*D)
        return self.fc_o(out)  # (N, L, D)


class Translator(nn.Module):
    """Crossmodal translator D_in -> D_out: Conv2d over a length-1 sequence, ReLU, self-attention (reference `seqEncoder`)."""

    def __init__(self, d_in: int, d_out: int, heads: int, kernel: int, dropout: float):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv2d(1, d_out, (kernel, d_in), padding=((kernel - 1) // 2, 0))
        self.self_attn = SelfAttention(d_out, heads, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D_in) -> (N, D_out)."""
        # The conv slides a (kernel, D_in) window over a zero-padded sequence of one row: only the kernel's centre
        # row meets x, the others meet padding and get zero gradient. A linear map with the centre row is the same
        # function and gradient (a test checks it against F.conv2d) at a fifth of the cost; its double backward
        # in the meta step was over half the training time. The parameter keeps the reference's conv shape.
        centre = (self.kernel - 1) // 2
        h = F.relu(F.linear(x, self.conv.weight[:, 0, centre, :], self.conv.bias))  # (N, D_out)
        return self.self_attn(h[:, None, :])[:, 0, :]  # (N, D_out) via a sequence of one token

    def eval_pieces(self) -> TranslatorEvalPieces:
        """The weights of the eval-mode form `o(v(relu(W_c x + b)))` (softmax over one key is 1; no dropout)."""
        centre = (self.kernel - 1) // 2
        attn = self.self_attn
        return TranslatorEvalPieces(
            conv_weight=self.conv.weight[:, 0, centre, :],
            conv_bias=self.conv.bias,
            v_weight=attn.fc_v.weight,
            v_bias=attn.fc_v.bias,
            o_weight=attn.fc_o.weight,
            o_bias=attn.fc_o.bias,
        )


class Block(nn.Module):
    """Linear -> LeakyReLU -> Linear: the reference `BlockUnit`, used for necks and classifiers."""

    def __init__(self, d_in: int, d_mid: int, d_out: int, slope: float):
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_mid)
        self.linear2 = nn.Linear(d_mid, d_out)
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d_in) -> (N, d_out)."""
        return self.linear2(F.leaky_relu(self.linear1(x), negative_slope=self.slope))


class WeightNet(nn.Module):
    """Meta weight net: Linear -> ReLU -> Linear(->1) -> sigmoid (reference `WUnit`)."""

    def __init__(self, d_in: int, d_hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_hidden)
        self.linear2 = nn.Linear(d_hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d_in) -> (N,) in (0, 1)."""
        return torch.sigmoid(self.linear2(F.relu(self.linear1(x))))[:, 0]


class CTMWA(nn.Module):
    """CTMWA over precomputed text and image embeddings; see DESIGN.md section 3 and `forward`."""

    def __init__(self, config: CTMWAConfig):
        super().__init__()
        self.config = config
        dt, dv, e, c = config.text_dim, config.image_dim, config.embed_dim, config.num_classes
        heads, kernel, p, slope = (
            config.translator_heads,
            config.translator_kernel,
            config.attn_dropout,
            config.leaky_slope,
        )
        self.text_encoder = nn.Linear(dt, dt)
        self.txt2img = Translator(dt, dv, heads, kernel, p)
        self.img2txt = Translator(dv, dt, heads, kernel, p)
        self.txt_neck = Block(dt + dv, (dt + dv + e) // 2, e, slope)
        self.img_neck = Block(dt + dv, (dt + dv + e) // 2, e, slope)
        self.m_c = Block(2 * e, (2 * e + c) // 2, c, slope)
        self.t_c = Block(e, (e + c) // 2, c, slope)
        self.v_c = Block(e, (e + c) // 2, c, slope)
        self.txt_w_net = WeightNet(3 * c + dt + dv, config.weight_net_hidden)
        self.img_w_net = WeightNet(3 * c + dt + dv, config.weight_net_hidden)
        if config.init == "kaiming":
            self.apply(_reference_init)
        # The evidence classifiers start at zero (uniform evidence 1/C) and draw no random numbers, so adding them
        # left the paper's modules' initialisation and every later random draw of training as they were.
        with torch.random.fork_rng(devices=[]):
            self.txt_e_c = nn.Linear(dt, c)
            self.img_e_c = nn.Linear(dv, c)
        for module in (self.txt_e_c, self.img_e_c):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        self.register_buffer(EVIDENCE_NEUTRAL, torch.zeros(c))  # (C,)
        with torch.random.fork_rng(devices=[]):
            self.probe = nn.Linear(dt + dv + 2, c)
        nn.init.zeros_(self.probe.weight)
        nn.init.zeros_(self.probe.bias)
        self.register_buffer(PROBE_WEIGHT, torch.zeros(1))  # (1,)

    def forward(
        self,
        text_emb: torch.Tensor,
        image_emb: torch.Tensor,
        has_text: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        label: torch.Tensor | None = None,
        class_bias: torch.Tensor | None = None,
    ) -> CTMWAOutput:
        """Score a batch: text_emb (N, Dt), image_emb (N, Dv), optional bool masks (N,), optional int labels (N,).

        Without `label`, the weight nets and the evidence take the model's own prediction, argmax(logits_m +
        class_bias) (ctmwa_training.class_bias; `logits_m` itself stays raw). A row with neither modality gets numbers
        that mean nothing; the caller marks it `no_content`.
        """
        # Missing modalities (DESIGN.md section 4). The text encoder acts on the raw text first, so the stand-in
        # for a missing text is img2txt(image), which training pulls towards text_encoder(text) (the L1(t, it)
        # term): it lives in t-space and must not pass through text_encoder again. A missing image is then
        # txt2img(t) of that (possibly substituted) t. The four translator calls are the reference's own:
        # img2txt(image), txt2img(t), img2txt(ti), txt2img(it).
        t = self.text_encoder(text_emb)  # (N, Dt)
        it = self.img2txt(image_emb)  # (N, Dt)
        if has_text is not None:
            t = torch.where(has_text[:, None], t, it)  # (N, Dt)
        ti = self.txt2img(t)  # (N, Dv)
        tit = self.img2txt(ti)  # (N, Dt)
        image = image_emb
        if has_image is not None:
            image = torch.where(has_image[:, None], image_emb, ti)  # (N, Dv)
            it = torch.where(has_image[:, None], it, tit)  # (N, Dt) = img2txt(image) for the substituted image
        iti = self.txt2img(it)  # (N, Dv)

        fused_t = torch.cat([t, ti], dim=1)  # (N, Dt+Dv)
        fused_v = torch.cat([it, image], dim=1)  # (N, Dt+Dv)
        m_t = self.txt_neck(fused_t)  # (N, E)
        m_v = self.img_neck(fused_v)  # (N, E)
        logits_m = self.m_c(torch.cat([m_t, m_v], dim=1))  # (N, C)
        logits_t = self.t_c(m_t)  # (N, C)
        logits_v = self.v_c(m_v)  # (N, C)

        logits = logits_m + self.probe_weight * torch.log_softmax(
            self.probe(self.probe_input(text_emb, image_emb, has_text, has_image)), dim=1
        )
        if label is None:
            label = (logits if class_bias is None else logits + class_bias).argmax(dim=1)  # (N,)
        # Evidence reads each modality's own embedding, never a translation (see EVIDENCE_MODULES).
        one_hot = F.one_hot(label, self.config.num_classes).to(logits_m.dtype)  # (N, C)
        w_in_t = torch.cat([one_hot, logits_m, logits_t, fused_t], dim=1).detach()  # (N, 3C+Dt+Dv)
        w_in_v = torch.cat([one_hot, logits_m, logits_v, fused_v], dim=1).detach()  # (N, 3C+Dt+Dv)
        return CTMWAOutput(
            logits_m=logits_m,
            logits=logits,
            logits_t=logits_t,
            logits_v=logits_v,
            fused_t=fused_t,
            fused_v=fused_v,
            t=t,
            ti=ti,
            it=it,
            tit=tit,
            iti=iti,
            text_weight=self.txt_w_net(w_in_t),
            image_weight=self.img_w_net(w_in_v),
            m_t=m_t,
            m_v=m_v,
            text_evidence=self.evidence(self.txt_e_c(text_emb), label),
            image_evidence=self.evidence(self.img_e_c(image_emb), label),
        )

    @staticmethod
    def probe_input(
        text_emb: torch.Tensor, image_emb: torch.Tensor, has_text: torch.Tensor | None, has_image: torch.Tensor | None
    ) -> torch.Tensor:
        """[text · has_text, image · has_image, has_text, has_image]: (N, Dt+Dv+2), what the probe reads."""
        n = text_emb.shape[0]
        t_mask = (
            torch.ones(n, 1, dtype=text_emb.dtype, device=text_emb.device)
            if has_text is None
            else has_text[:, None].to(text_emb.dtype)
        )
        v_mask = (
            torch.ones(n, 1, dtype=image_emb.dtype, device=image_emb.device)
            if has_image is None
            else has_image[:, None].to(image_emb.dtype)
        )
        text = torch.where(t_mask > 0, text_emb, torch.zeros_like(text_emb))
        image = torch.where(v_mask > 0, image_emb, torch.zeros_like(image_emb))
        return torch.cat([text, image, t_mask, v_mask], dim=1)

    def evidence(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """How strongly one modality supports class `label`, in [0, 1]: (N, C) evidence logits, (N,) -> (N,).

        With p = softmax(logits), the modality classifier's P(modality's own label = k | that modality):
        p_c / (p_c + p_neutral), the odds of the class against "no sentiment" (0.5 when `label` is neutral itself:
        no sentiment to carry); p_c where the labels have no neutral class.

        Computed from the logits, never from p: p_c / (p_c + p_n) = sigmoid(l_c - l_n) exactly, and p_c =
        exp(log_softmax(l)_c). A fitted classifier on separable data reaches logits in the hundreds, where float32
        softmax underflows to 0 or a denormal and runtimes disagree (DESIGN.md section 8).
        """
        l_c = logits.gather(1, label[:, None])[:, 0]  # (N,)
        neutral = getattr(self, EVIDENCE_NEUTRAL).to(logits.dtype)  # (C,) one-hot of the neutral class, or zeros
        has_neutral = neutral.sum()  # 1 or 0
        against_neutral = torch.sigmoid(l_c - logits @ neutral)  # (N,) 0.5 when label is the neutral class
        p_c = torch.log_softmax(logits, dim=1).gather(1, label[:, None])[:, 0].exp()  # (N,)
        return has_neutral * against_neutral + (1 - has_neutral) * p_c

    def backbone_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters of everything but the weight nets, by state-dict name (what the outer step trains)."""
        return {f"{m}.{n}": p for m in BACKBONE_MODULES for n, p in getattr(self, m).named_parameters()}

    def weight_net_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters of `txt_w_net` and `img_w_net` by state-dict name (what the query step trains)."""
        return {f"{m}.{n}": p for m in WEIGHT_NET_MODULES for n, p in getattr(self, m).named_parameters()}

    def evidence_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters of `txt_e_c` and `img_e_c` by state-dict name (what ctmwa_training.evidence fits, after training)."""
        return {f"{m}.{n}": p for m in EVIDENCE_MODULES for n, p in getattr(self, m).named_parameters()}


def _reference_init(module: nn.Module) -> None:
    # The reference initialises every Conv/Linear weight kaiming-normal (fan_in, gain sqrt 2) and zeroes biases.
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in")
        nn.init.zeros_(module.bias)


def save_checkpoint(model: CTMWA, config: CTMWAConfig, out_dir: str | Path, extra: dict[str, Any]) -> Path:
    """Write `model.safetensors` and `config.json` ({"format_version", "model": config, **extra}) into out_dir."""
    from safetensors.torch import save_file

    reserved = {"format_version", "model"} & set(extra)
    if reserved:
        raise CheckpointError(f"extra checkpoint keys {sorted(reserved)} are reserved; rename them")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format_version": CHECKPOINT_FORMAT_VERSION, "model": dataclasses.asdict(config), **extra}
    try:
        text = json.dumps(meta, indent=2, sort_keys=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint extra is not plain JSON ({e}); pass only str/int/float/bool/list/dict"
        ) from e
    # Write under temporary names, then rename: a killed save never leaves a half file under the real name.
    tmp_weights, tmp_config = out / (WEIGHTS_FILE + ".tmp"), out / (CONFIG_FILE + ".tmp")
    save_file(state, str(tmp_weights), metadata={"format": "pt"})
    tmp_config.write_text(text + "\n")
    tmp_weights.replace(out / WEIGHTS_FILE)
    tmp_config.replace(out / CONFIG_FILE)
    logger.info("saved checkpoint to %s (%d tensors)", out, len(state))
    return out


def load_checkpoint(path: str | Path, *, evidence: bool = True) -> tuple[CTMWA, CTMWAConfig, dict[str, Any]]:
    """Rebuild the model from a checkpoint folder; returns (model in eval mode, its config, the extra dict).

    A checkpoint whose evidence classifiers are missing or of an older kind (fitted on the neck outputs) is an
    error naming `ctmwa-train evidence`; with `evidence=False` it loads with zero (unfitted) classifiers instead,
    for that command to fit.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (config_path, weights_path):
        if not p.is_file():
            raise CheckpointError(
                f"checkpoint {folder} has no {p.name}; point at the folder that `ctmwa-train --out` wrote"
            )
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {config_path}: {e}") from e
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{config_path} has no 'model' section; it was not written by save_checkpoint")
    version = meta.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path} has format_version {version!r}; this code reads {CHECKPOINT_FORMAT_VERSION}; "
            "retrain or use the matching ctmwa-batch version"
        )
    config = CTMWAConfig.from_dict(meta["model"], where=str(config_path))
    try:
        state = load_file(str(weights_path))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot read {weights_path}: {e}") from e
    model = CTMWA(config)
    fresh = {**model.evidence_parameters(), EVIDENCE_NEUTRAL: getattr(model, EVIDENCE_NEUTRAL)}
    # Stale: missing, or the earlier kind over the neck outputs ((C, E) weights); any other misfit is reported below.
    neck_kind = (config.num_classes, config.embed_dim)
    stale = sorted(
        k
        for k, v in fresh.items()
        if k not in state or (state[k].shape != v.shape and tuple(state[k].shape) == neck_kind)
    )
    if stale and evidence:
        raise CheckpointError(
            f"{weights_path} has no modality-evidence classifiers of this version ({', '.join(stale)} missing or of "
            "another shape: it was trained before they read the raw embeddings); fit them on the frozen model, "
            f"without retraining: ctmwa-train evidence --checkpoint {folder} --features FEATURES.parquet"
        )
    # A checkpoint from before the probe blend scores as the paper's model: probe off (weight 0).
    for name, value in {
        **{f"{PROBE_MODULE}.{n}": p for n, p in model.probe.named_parameters()},
        PROBE_WEIGHT: getattr(model, PROBE_WEIGHT),
    }.items():
        state.setdefault(name, value.detach().clone())
    if stale:
        state = {k: v for k, v in state.items() if k not in fresh}
        state.update({k: v.detach().clone() for k, v in fresh.items()})
        logger.warning("%s: modality-evidence classifiers missing or stale; loaded unfitted (zero)", weights_path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{weights_path} does not fit the model described by {config_path}: {e}") from e
    model.eval()
    extra = {k: v for k, v in meta.items() if k not in ("format_version", "model")}
    return model, config, extra

"""CTMWA model: architecture as DESIGN.md section 3, missing-modality semantics of section 4, checkpoints."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from ctmwa_training.errors import CheckpointError, ConfigError
from ctmwa_training.model import (
    BACKBONE_MODULES,
    CTMWA,
    EVIDENCE_MODULES,
    WEIGHT_NET_MODULES,
    CTMWAConfig,
    load_checkpoint,
    save_checkpoint,
)

TINY = CTMWAConfig(text_dim=16, image_dim=12, embed_dim=8, num_classes=3)


def tiny_model(seed: int = 0, **changes) -> CTMWA:
    torch.manual_seed(seed)
    return CTMWA(CTMWAConfig(**{**TINY.__dict__, **changes}))


def test_module_names_and_shapes_follow_design():
    model = tiny_model()
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == set(BACKBONE_MODULES) | set(WEIGHT_NET_MODULES) | set(EVIDENCE_MODULES) | {"probe"}
    dt, dv, e, c = 16, 12, 8, 3
    assert model.text_encoder.weight.shape == (dt, dt)
    assert model.txt2img.conv.weight.shape == (dv, 1, 5, dt)
    assert model.img2txt.conv.weight.shape == (dt, 1, 5, dv)
    assert model.txt2img.self_attn.fc_v.weight.shape == (2 * dv, dv)  # 2 heads, d_v = D_out
    assert model.txt2img.self_attn.fc_o.weight.shape == (dv, 2 * dv)
    assert model.txt_neck.linear1.weight.shape == ((dt + dv + e) // 2, dt + dv)
    assert model.img_neck.linear2.weight.shape == (e, (dt + dv + e) // 2)
    assert model.m_c.linear1.weight.shape == ((2 * e + c) // 2, 2 * e)
    assert model.t_c.linear2.weight.shape == (c, (e + c) // 2)
    assert model.txt_w_net.linear1.weight.shape == (128, 3 * c + dt + dv)
    assert model.img_w_net.linear2.weight.shape == (1, 128)
    out = model(torch.randn(5, dt), torch.randn(5, dv))
    assert out.logits_m.shape == out.logits_t.shape == out.logits_v.shape == (5, c)
    assert out.fused_t.shape == out.fused_v.shape == (5, dt + dv)
    assert out.text_weight.shape == out.image_weight.shape == (5,)
    assert ((out.text_weight > 0) & (out.text_weight < 1)).all()
    assert model.txt_e_c.weight.shape == (c, dt) and model.img_e_c.weight.shape == (c, dv)
    # untrained evidence classifiers are zero and no class is marked neutral: every class 1/C
    torch.testing.assert_close(out.text_evidence, torch.full((5,), 1 / c))
    torch.testing.assert_close(out.image_evidence, torch.full((5,), 1 / c))


def test_evidence_is_the_raw_embedding_classifier_at_the_prediction_against_neutral():
    """text_evidence = p_c / (p_c + p_neutral) of txt_e_c on the raw text embedding (c: the predicted class, bias
    included); p_c where no class is neutral; 0.5 where neutral is predicted; no gradient into the backbone."""
    model = tiny_model(seed=2).eval()  # no attention dropout: every forward below predicts the same classes
    with torch.no_grad():
        for m in (model.txt_e_c, model.img_e_c):
            m.weight.normal_()
            m.bias.normal_()
    text, image = torch.randn(12, 16), torch.randn(12, 12)
    raw = model(text, image).logits_m.detach()
    gap = raw.max(1).values - raw[:, 1]
    bias = torch.tensor([0.0, float(gap[gap > 0].median()), 0.0])  # moves some rows to class 1, not all
    out = model(text, image, class_bias=bias)
    predicted = (out.logits_m + bias).argmax(1)
    assert predicted.eq(1).any() and predicted.ne(1).any()
    rows = torch.arange(12)
    p_t, p_v = torch.softmax(model.txt_e_c(text), 1), torch.softmax(model.img_e_c(image), 1)
    torch.testing.assert_close(out.text_evidence, p_t[rows, predicted])  # no neutral class marked
    torch.testing.assert_close(out.image_evidence, p_v[rows, predicted])

    model.evidence_neutral.copy_(torch.tensor([0.0, 1.0, 0.0]))
    out = model(text, image, class_bias=bias)
    want_t = p_t[rows, predicted] / (p_t[rows, predicted] + p_t[:, 1])
    want_v = p_v[rows, predicted] / (p_v[rows, predicted] + p_v[:, 1])
    torch.testing.assert_close(out.text_evidence, want_t)
    torch.testing.assert_close(out.image_evidence, want_v)
    torch.testing.assert_close(out.text_evidence[predicted == 1], torch.full((int(predicted.eq(1).sum()),), 0.5))
    # a missing modality's stand-in never reaches its evidence: it reads the embedding as given (the head zeroes it)
    out_missing = model(text, image, has_text=torch.zeros(12, dtype=torch.bool), class_bias=bias)
    p_c = torch.softmax(model.txt_e_c(text), 1)[rows, (out_missing.logits_m + bias).argmax(1)]
    torch.testing.assert_close(out_missing.text_evidence, p_c / (p_c + p_t[:, 1]))
    # no gradient from the evidence reaches the backbone
    (out.text_evidence.sum() + out.image_evidence.sum()).backward()
    assert all(p.grad is None for p in model.backbone_parameters().values())
    assert model.txt_e_c.weight.grad is not None


def test_probe_blend_adds_the_weighted_probe_log_probs_to_the_answer_only():
    """logits = logits_m + probe_weight · log_softmax(probe([text·has_text, image·has_image, has_text, has_image]));
    logits_m (what training's losses read) is untouched, and the predicted class the weight nets see follows logits."""
    model = tiny_model(seed=4).eval()
    text, image = torch.randn(10, 16), torch.randn(10, 12)
    has_text = torch.tensor([True] * 7 + [False] * 3)
    off = model(text, image, has_text=has_text)
    torch.testing.assert_close(off.logits, off.logits_m)  # blend off by default: the paper's model alone
    with torch.no_grad():
        model.probe.weight.normal_()
        model.probe_weight.fill_(3.0)
    on = model(text, image, has_text=has_text)
    masked_text = text * has_text[:, None]
    probe_in = torch.cat([masked_text, image, has_text[:, None].float(), torch.ones(10, 1)], 1)
    torch.testing.assert_close(on.logits_m, off.logits_m)
    torch.testing.assert_close(on.logits, on.logits_m + 3.0 * torch.log_softmax(model.probe(probe_in), 1))
    one_hot = torch.nn.functional.one_hot(on.logits.argmax(1), 3).float()
    w_in = torch.cat([one_hot, on.logits_m, on.logits_t, on.fused_t], 1)
    torch.testing.assert_close(on.text_weight, model.txt_w_net(w_in))


def test_reference_init_is_kaiming_normal_with_zero_bias():
    torch.manual_seed(0)
    model = CTMWA(CTMWAConfig(text_dim=256, image_dim=256, num_classes=3))
    assert torch.count_nonzero(model.text_encoder.bias) == 0
    assert torch.count_nonzero(model.txt2img.conv.bias) == 0
    std = model.text_encoder.weight.std().item()
    assert abs(std - (2 / 256) ** 0.5) < 0.005
    conv_std = model.txt2img.conv.weight.std().item()  # fan_in = kernel rows * D_in
    assert abs(conv_std - (2 / (5 * 256)) ** 0.5) < 0.002


def manual_translator(translator, x):
    """o(v(relu(conv_centre(x)))) written out from the module's raw parameters."""
    w = translator.conv.weight[:, 0, 2, :]
    h = torch.relu(x @ w.T + translator.conv.bias)
    attn = translator.self_attn
    v = h @ attn.fc_v.weight.T + attn.fc_v.bias
    return v @ attn.fc_o.weight.T + attn.fc_o.bias


@pytest.mark.parametrize("name", ["txt2img", "img2txt"])
def test_translator_eval_equals_folded_form(name):
    model = tiny_model().eval()
    translator = getattr(model, name)
    x = torch.randn(7, translator.conv.weight.shape[-1])
    with torch.no_grad():
        got = translator(x)
        expected = manual_translator(translator, x)
        pieces = translator.eval_pieces()
        w, b = pieces.merged_output()
        h = torch.relu(F.linear(x, pieces.conv_weight, pieces.conv_bias))
        merged = F.linear(h, w, b)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pieces.apply(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-5)


def reference_translator(translator, x):
    """The reference seqEncoder: Conv2d over the padded length-1 sequence, ReLU, self-attention."""
    h = translator.conv(x[:, None, None, :])  # (N, D_out, 1, 1)
    h = torch.relu(h.squeeze(3)).transpose(1, 2)  # (N, 1, D_out)
    return translator.self_attn(h)[:, 0, :]


@pytest.mark.parametrize("train", [False, True])
def test_translator_equals_the_reference_conv_in_value_and_gradient(train):
    model = tiny_model(attn_dropout=0.3).train(train)
    translator = model.img2txt
    x = torch.randn(9, 12)
    torch.manual_seed(11)
    got = translator(x)
    g_got = torch.autograd.grad(got.square().sum(), translator.conv.weight)[0]
    torch.manual_seed(11)  # same dropout draws
    expected = reference_translator(translator, x)
    g_exp = torch.autograd.grad(expected.square().sum(), translator.conv.weight)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got, g_exp, rtol=1e-5, atol=1e-6)
    assert g_exp[:, :, [0, 1, 3, 4], :].abs().max() == 0  # only the centre row ever meets data


def test_translator_training_drops_whole_heads_of_the_attention_matrix():
    model = tiny_model(attn_dropout=0.5).train()
    translator = model.txt2img
    attn = translator.self_attn
    x = torch.randn(64, 16)
    torch.manual_seed(3)
    with torch.no_grad():
        got = translator(x)
        h = torch.relu(F.linear(x, translator.conv.weight[:, 0, 2, :], translator.conv.bias))
        v = attn.fc_v(h).view(64, 2, 12)
        # Each head's single attention weight (1.0) is either dropped or scaled by 1/(1-p) = 2.
        candidates = torch.stack(
            [
                attn.fc_o((v * torch.tensor(mask).view(1, 2, 1)).reshape(64, 24))
                for mask in itertools.product([0.0, 2.0], repeat=2)
            ]
        )  # (4, N, D)
    err = (candidates - got[None]).abs().amax(dim=2).amin(dim=0)
    assert err.max() < 1e-5
    chosen = (candidates - got[None]).abs().amax(dim=2).argmin(dim=0)
    assert len(set(chosen.tolist())) > 1, "dropout never varied across rows"


def test_missing_modality_uses_the_translation():
    model = tiny_model().eval()
    text, image = torch.randn(4, 16), torch.randn(4, 12)
    has_text = torch.tensor([True, False, True, False])
    has_image = torch.tensor([True, True, False, False])
    with torch.no_grad():
        out = model(text, image, has_text, has_image)
        enc = model.text_encoder(text)
        # row 1: text missing -> t = img2txt(image), not text_encoder(anything)
        torch.testing.assert_close(out.t[1], model.img2txt(image[1:2])[0])
        torch.testing.assert_close(out.t[0], enc[0])
        # row 2: image missing -> image := txt2img(t), so it = img2txt(txt2img(t))
        ti2 = model.txt2img(enc[2:3])
        torch.testing.assert_close(out.fused_v[2, 16:], ti2[0])
        torch.testing.assert_close(out.it[2], model.img2txt(ti2)[0])
        torch.testing.assert_close(out.fused_v[0, 16:], image[0])
        # the garbage in a missing slot never reaches the outputs
        text2, image2 = text.clone(), image.clone()
        text2[1] = 100.0
        image2[2] = -100.0
        out2 = model(text2, image2, has_text, has_image)
    for row in (0, 1, 2):
        torch.testing.assert_close(out2.logits_m[row], out.logits_m[row])
        torch.testing.assert_close(out2.text_weight[row], out.text_weight[row])


def test_all_present_masks_equal_no_masks():
    model = tiny_model().eval()
    text, image = torch.randn(6, 16), torch.randn(6, 12)
    ones = torch.ones(6, dtype=torch.bool)
    with torch.no_grad():
        a, b = model(text, image), model(text, image, ones, ones)
    for field in ("logits_m", "logits_t", "logits_v", "it", "iti", "tit", "text_weight"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field))


def test_weights_without_label_use_own_prediction_and_are_detached_from_backbone():
    model = tiny_model().eval()
    text, image = torch.randn(8, 16), torch.randn(8, 12)
    out = model(text, image)
    pred = out.logits_m.argmax(1)
    other = (pred + 1) % 3
    with torch.no_grad():
        same = model(text, image, label=pred)
        diff = model(text, image, label=other)
    torch.testing.assert_close(out.text_weight, same.text_weight)
    torch.testing.assert_close(out.image_weight, same.image_weight)
    assert not torch.allclose(out.text_weight, diff.text_weight)
    (out.text_weight.sum() + out.image_weight.sum()).backward()
    assert all(p.grad is None for p in model.backbone_parameters().values())
    assert all(p.grad is not None for p in model.weight_net_parameters().values())


def test_checkpoint_round_trip(tmp_path):
    model = tiny_model(seed=5)
    extra = {"labels": ["positive", "neutral", "negative"], "training": {"lr": 0.0005}}
    save_checkpoint(model, model.config, tmp_path / "ckpt", extra)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["model"]["text_dim"] == 16 and meta["labels"] == extra["labels"]
    loaded, config, got_extra = load_checkpoint(tmp_path / "ckpt")
    assert config == model.config and got_extra == extra and not loaded.training
    text, image = torch.randn(3, 16), torch.randn(3, 12)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(text, image).logits_m, model(text, image).logits_m, rtol=0, atol=0)


def test_checkpoint_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_checkpoint(tmp_path)
    model = tiny_model()
    save_checkpoint(model, model.config, tmp_path, {})
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"]["text_dim"] = 20
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tmp_path)
    meta["model"]["text_dims"] = 16
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="text_dims"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(model, model.config, tmp_path, {"model": 1})


def test_config_validation_names_the_value():
    with pytest.raises(ConfigError, match="num_classes = 1"):
        CTMWAConfig(num_classes=1)
    with pytest.raises(ConfigError, match="translator_kernel = 4"):
        CTMWAConfig(translator_kernel=4)
    with pytest.raises(ConfigError, match="embed_dim"):
        CTMWAConfig.from_dict({"embed_dim": "128"})


@pytest.mark.parametrize("kind", ["none", "neck-sized"])
def test_a_checkpoint_with_missing_or_stale_evidence_names_the_fix(tmp_path, kind):
    """A checkpoint from before the evidence classifiers (none), or from when they read the neck outputs (E wide),
    is an error naming `ctmwa-train evidence`; evidence=False loads it with zero classifiers for that command."""
    from safetensors.torch import load_file, save_file

    model = tiny_model()
    save_checkpoint(model, TINY, tmp_path, {})
    state = {
        k: v
        for k, v in load_file(str(tmp_path / "model.safetensors")).items()
        if not k.startswith(EVIDENCE_MODULES) and k != "evidence_neutral"
    }
    if kind == "neck-sized":
        e, c = TINY.embed_dim, TINY.num_classes
        state.update(
            {f"{m}.weight": torch.ones(c, e) for m in EVIDENCE_MODULES}
            | {f"{m}.bias": torch.ones(c) for m in EVIDENCE_MODULES}
        )
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"ctmwa-train evidence --checkpoint {tmp_path} --features"):
        load_checkpoint(tmp_path)
    loaded, _, _ = load_checkpoint(tmp_path, evidence=False)
    assert all(p.abs().sum() == 0 for p in loaded.evidence_parameters().values())
    assert loaded.evidence_neutral.sum() == 0
    for name, value in model.backbone_parameters().items():
        torch.testing.assert_close(loaded.backbone_parameters()[name], value)

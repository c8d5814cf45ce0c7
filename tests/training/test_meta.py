"""The meta-weight step of DESIGN.md section 3, checked against hand-computed steps and finite differences."""

from __future__ import annotations

import copy

import pytest
import torch

from ctmwa_training.data import FeatureBatch
from ctmwa_training.errors import ConfigError
from ctmwa_training.meta import (
    MetaWeightTrainer,
    TrainConfig,
    fast_weights,
    query_loss,
    run_model,
    translation_loss,
    weighted_loss,
)
from ctmwa_training.model import BACKBONE_MODULES, CTMWA, EVIDENCE_MODULES, CTMWAConfig

C = 3


def tiny(seed=0, dtype=torch.float32, dt=6, dv=5, dropout=0.0) -> CTMWA:
    torch.manual_seed(seed)
    model = CTMWA(
        CTMWAConfig(text_dim=dt, image_dim=dv, embed_dim=4, num_classes=C, attn_dropout=dropout, weight_net_hidden=8)
    )
    return model.to(dtype)


def batch(n, seed, dtype=torch.float32, dt=6, dv=5, missing=False) -> FeatureBatch:
    g = torch.Generator().manual_seed(seed)
    has_text = torch.ones(n, dtype=torch.bool)
    has_image = torch.ones(n, dtype=torch.bool)
    if missing:
        has_text[0] = False
        has_image[1] = False
    return FeatureBatch(
        post_id=torch.arange(n).numpy().astype(str),
        text=torch.randn(n, dt, generator=g, dtype=dtype),
        image=torch.randn(n, dv, generator=g, dtype=dtype),
        has_text=has_text,
        has_image=has_image,
        label=torch.randint(0, C, (n,), generator=g),
        t_label=torch.randint(0, C, (n,), generator=g),
        v_label=torch.randint(0, C, (n,), generator=g),
    )


CONFIG = TrainConfig(inner_lr=0.1, lr=0.05, weight_decay=0.0)


def test_fast_weights_are_one_sgd_step_over_the_backbone_only():
    model = tiny()
    backbone = model.backbone_parameters()
    shift = {n: torch.randn_like(p) for n, p in backbone.items()}
    # loss = Σ ½‖p‖² + <shift, p>  =>  ∇ = p + shift  =>  θ' = (1 - lr) θ - lr · shift
    loss = sum(0.5 * p.square().sum() + (shift[n] * p).sum() for n, p in backbone.items())
    fast = fast_weights(model, loss, inner_lr=0.1)
    assert set(fast) == set(backbone)
    assert not any(name.startswith(("txt_w_net", "img_w_net")) for name in fast)
    for name, p in backbone.items():
        torch.testing.assert_close(fast[name], 0.9 * p.detach() - 0.1 * shift[name])


def test_support_step_equals_plain_sgd_on_a_copy():
    model = tiny()
    trainer = MetaWeightTrainer(model, CONFIG)
    b = batch(8, seed=1, missing=True)
    fast, loss = trainer.support_step(b)
    copy_model = copy.deepcopy(model)
    sgd = torch.optim.SGD(list(copy_model.backbone_parameters().values()), lr=CONFIG.inner_lr)
    out = copy_model(b.text, b.image, b.has_text, b.has_image, label=b.label)
    ref_loss = weighted_loss(out, b, CONFIG, out.text_weight, out.image_weight)
    ref_loss.backward()
    sgd.step()
    torch.testing.assert_close(loss, ref_loss)
    for name, p in copy_model.backbone_parameters().items():
        torch.testing.assert_close(fast[name], p.detach(), rtol=1e-5, atol=1e-7)
    # the fast weights still depend on the weight nets (create_graph): that is what the query step differentiates
    phi = list(model.weight_net_parameters().values())
    grads = torch.autograd.grad(sum(f.sum() for f in fast.values()), phi, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_query_gradient_of_weight_nets_matches_finite_differences():
    """The weight nets' gradient is d query_loss(θ'(φ)) / dφ: a second-order path through the support step."""
    model = tiny(dtype=torch.float64)
    trainer = MetaWeightTrainer(model, CONFIG)
    b, q = batch(10, seed=2, dtype=torch.float64), batch(7, seed=3, dtype=torch.float64)
    recorded = {}

    class Recorder(torch.optim.Optimizer):  # stands in for Adam: keeps the gradient it is given
        def __init__(self, params):
            super().__init__(params, {})

        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    recorded[id(p)] = p.grad.clone()

    trainer.wnet_optimizer = Recorder(list(model.weight_net_parameters().values()))
    fast, _ = trainer.support_step(b)
    trainer.query_step(fast, q)

    def f() -> float:
        fast, _ = trainer.support_step(b)
        return query_loss(run_model(model, q, label=q.label, params=fast), q).item()

    gen = torch.Generator().manual_seed(0)
    checked = 0
    for name, p in model.weight_net_parameters().items():
        g = recorded[id(p)]
        flat = p.data.view(-1)
        for i in torch.randint(0, flat.numel(), (3,), generator=gen).tolist():
            old = flat[i].item()
            flat[i] = old + 1e-6
            up = f()
            flat[i] = old - 1e-6
            down = f()
            flat[i] = old
            numeric = (up - down) / 2e-6
            assert abs(g.view(-1)[i].item() - numeric) < 1e-8 + 1e-5 * abs(numeric), name
            checked += 1
    assert checked == 24
    assert any(g.abs().max() > 1e-8 for g in recorded.values()), "the query loss must reach the weight nets"


def test_query_step_moves_weight_nets_only_and_outer_step_backbone_only():
    model = tiny()
    trainer = MetaWeightTrainer(model, CONFIG)
    b, q = batch(8, seed=4), batch(8, seed=5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fast, _ = trainer.support_step(b)
    trainer.query_step(fast, q)
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == n.startswith(("txt_w_net", "img_w_net")), n
        assert p.grad is None, f"{n} kept a gradient from the query step"
    middle = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.outer_step(b)
    for n, p in model.named_parameters():
        is_wnet = n.startswith(("txt_w_net", "img_w_net"))
        is_evidence = n.startswith(
            (*EVIDENCE_MODULES, "probe.")
        )  # fitted after training (ctmwa_training.evidence, ctmwa_training.probe), never here
        # queries and keys of a one-token attention are dead (softmax over one key is 1): zero gradient
        dead = ".self_attn.fc_q." in n or ".self_attn.fc_k." in n
        assert torch.equal(p, middle[n]) == (is_wnet or is_evidence or dead), n
        if is_wnet or is_evidence:
            assert p.grad is None, f"{n} got a gradient from the outer loss"


def test_backbone_gradient_of_a_full_step_is_the_outer_loss_alone():
    model = tiny()
    twin = copy.deepcopy(model)
    trainer = MetaWeightTrainer(model, CONFIG)
    b, q = batch(8, seed=6, missing=True), batch(8, seed=7)
    trainer.step(b, q)

    # By hand: support + query on the twin (updates its weight nets), then the outer loss through θ.
    twin_trainer = MetaWeightTrainer(twin, CONFIG)
    fast, _ = twin_trainer.support_step(b)
    twin_trainer.query_step(fast, q)
    for n, p in model.weight_net_parameters().items():
        torch.testing.assert_close(p, twin.weight_net_parameters()[n])
    out = twin(b.text, b.image, b.has_text, b.has_image, label=b.label)
    loss = weighted_loss(out, b, CONFIG, out.text_weight.detach(), out.image_weight.detach())
    params = twin.backbone_parameters()
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    for m in BACKBONE_MODULES:  # clip per module, max norm 2
        names = [n for n in params if n.startswith(m + ".")]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(grads[n]) for n in names]))
        scale = min(1.0, 2.0 / (norm.item() + 1e-6))
        for n in names:
            grads[n] = grads[n] * scale
    for n, p in model.backbone_parameters().items():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-7)
        # SGD with momentum, first step, no weight decay: θ ← θ − lr · g
        torch.testing.assert_close(p.detach(), params[n].detach() - CONFIG.lr * grads[n], rtol=1e-4, atol=1e-7)


def test_outer_clip_is_per_module():
    model = tiny()
    trainer = MetaWeightTrainer(model, TrainConfig(clip_grad_norm=1e-3, weight_decay=0.0))
    trainer.outer_step(batch(8, seed=8))
    for m in BACKBONE_MODULES:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in getattr(model, m).parameters()]))
        # per-module clipping brings every module to the limit; a global clip would leave each part below it
        assert norm.item() == pytest.approx(1e-3, rel=1e-3), m


def test_late_fusion_counts_every_loss_once_and_leaves_weight_nets_alone():
    model = tiny()
    trainer = MetaWeightTrainer(model, TrainConfig(mode="late_fusion", weight_decay=0.0))
    wnet_before = {n: p.detach().clone() for n, p in model.weight_net_parameters().items()}
    b = batch(8, seed=9)
    with torch.no_grad():
        out = model(b.text, b.image, b.has_text, b.has_image, label=b.label)
        ce = torch.nn.functional.cross_entropy
        expected = (
            translation_loss(out, b, trainer.config)
            + ce(out.logits_m, b.label)
            + ce(out.logits_t, b.label)
            + ce(out.logits_v, b.label)
        )
    losses = trainer.step(b, None)
    assert losses.outer == pytest.approx(expected.item(), rel=1e-5)
    for n, p in model.weight_net_parameters().items():
        assert torch.equal(p, wnet_before[n])


def test_translation_loss_is_l1_and_skips_substituted_rows():
    model = tiny()
    b = batch(6, seed=10)
    cfg = TrainConfig(lambda_ti=1.0, lambda_it=0.0, lambda_tit=0.0, lambda_iti=0.0)
    with torch.no_grad():
        out = model(b.text, b.image, b.has_text, b.has_image)
        assert translation_loss(out, b, cfg) == pytest.approx(torch.nn.L1Loss()(out.ti, b.image).item(), rel=1e-6)
        b.has_text[:2] = False  # rows 0, 1: text substituted; L1(image, ti) only over rows 2..5
        out = model(b.text, b.image, b.has_text, b.has_image)
        expected = torch.nn.L1Loss()(out.ti[2:], b.image[2:]).item()
        assert translation_loss(out, b, cfg) == pytest.approx(expected, rel=1e-6)


def test_train_config_validation_names_the_value():
    with pytest.raises(ConfigError, match="mode = 'maml'"):
        TrainConfig(mode="maml")
    with pytest.raises(ConfigError, match="query_fraction = 1.5"):
        TrainConfig.from_dict({"query_fraction": 1.5})  # the query set is prepare's decision, not training's
    with pytest.raises(ConfigError, match="lr_decy"):
        TrainConfig.from_dict({"lr_decy": True})
    with pytest.raises(ConfigError, match="epochs = True"):
        TrainConfig.from_dict({"epochs": True})
    with pytest.raises(ConfigError, match="unimodal_labels = 'false'"):
        TrainConfig.from_dict({"unimodal_labels": "false"})
    cfg = TrainConfig.from_dict({"lr": 1, "wnet_betas": [0.9, 0.99]})
    assert cfg.lr == 1.0 and cfg.wnet_betas == (0.9, 0.99)


def test_optional_linear_decay_holds_then_falls_to_zero():
    trainer = MetaWeightTrainer(tiny(), TrainConfig(lr=0.3, wnet_lr=0.03, epochs=4, lr_decay=True))
    lrs = []
    for epoch in range(1, 5):
        trainer.end_epoch(epoch)
        lrs.append((trainer.backbone_optimizer.param_groups[0]["lr"], trainer.wnet_optimizer.param_groups[0]["lr"]))
    # epochs 1-2 at the full rate; epoch 3 at 2/3, epoch 4 at 1/3; zero after the last
    assert [lr for lr, _ in lrs] == pytest.approx([0.3, 0.2, 0.1, 0.0])
    assert [lr for _, lr in lrs] == pytest.approx([0.03, 0.02, 0.01, 0.0])
    constant = MetaWeightTrainer(tiny(), TrainConfig(lr=0.3, epochs=4))
    constant.end_epoch(4)
    assert all(g["lr"] == 0.3 for g in constant.backbone_optimizer.param_groups)

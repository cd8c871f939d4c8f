"""One official JiT training step, and AdamW + both EMAs over three steps, reproduced by our training code.

The official code (LTH14/JiT, the code of arXiv 2511.13720) computed them on the tiny JiT of ``jit_tiny``
(docs/official-code.md, "Parity fixtures"); its random draws are fed to our code in the same roles:
label-drop uniforms -> ``drop``, logit-normal normals -> ``t`` (through our ``logit_normal_t``), pixel noise
-> ``noise``. What runs is ours: :func:`jit_core.diffusion.training_losses` (the trainer's objective), the
trainer's parameter groups, lr rule, AdamW and :class:`jit_core.training.state.EMA`.
"""
from __future__ import annotations

import pytest
import torch

from jit_core.config import Config
from jit_core.diffusion.flow import add_noise, logit_normal_t, training_losses
from jit_core.model import get_model_config
from jit_core.official.layout import from_official, to_official
from jit_core.plugins import Plugins
from jit_core.runs.network import build_network
from jit_core.training.build import make_optimizer
from jit_core.training.optim import lr_at, param_groups, peak_lr
from jit_core.training.state import EMA

from .official_fixtures import compact

pytestmark = pytest.mark.usefixtures("one_thread")

# the fixtures' own advice: loss and weights 1e-6 relative, gradients 1e-7 absolute at max |grad| ~ 0.1. Measured
# (fp32, 1 thread): loss identical, gradients within 3.4e-7 of each tensor's largest value, EMAs within 3 ulp
# (the official mul_ + add_ rounds where our lerp does not), weights after AdamW within 1e-7 + 1e-6 relative: a step
# moves a weight by about lr, so its rounding error scales with lr, not with the weight (hence atol = 1e-6 lr)
LOSS_RTOL, WEIGHT_RTOL = 1e-6, 1e-6
GRAD_SCALED_ATOL = 2e-6      # 6x the measured 3.4e-7: room for another CPU's kernels, far below any real mistake


def jit_config() -> Config:
    """The official fixture's run in our config: JiT-T/4 at 32 px, noise scale 1, the recipe's diffusion."""
    cfg = Config(model="JiT-T/4")
    cfg.data.image_size = 32
    cfg.diffusion.noise_scale = 1.0
    info = compact("jit_train").meta["info"]["args"]
    assert (cfg.diffusion.P_mean, cfg.diffusion.P_std, cfg.diffusion.t_eps, cfg.diffusion.label_drop_prob) == (
        info["P_mean"], info["P_std"], info["t_eps"], info["label_drop_prob"])
    return cfg


def official_model(cfg: Config, plugins: Plugins, weights: str = "model"):
    """Our network for ``cfg`` holding the official fixture's weights (``model`` / ``model_ema1`` / ...)."""
    model = build_network(cfg, plugins, get_model_config(cfg.model))
    sd, layout = from_official(compact("jit_tiny").checkpoint()[weights])
    assert layout == "jit"
    model.load_state_dict(sd, strict=True)
    return model


def official_names(model) -> dict[str, str]:
    """Our parameter name -> the official one (``net.*``)."""
    sd = model.state_dict()
    return dict(zip(sd, to_official(sd)))


@pytest.mark.parametrize("case", ["nodrop", "drop"])
def test_training_step_loss_and_every_gradient(case):
    fx, cfg, plugins = compact("jit_train"), jit_config(), Plugins(enabled=[])
    model = official_model(cfg, plugins).train()
    d = cfg.diffusion
    t = logit_normal_t(fx["t_normal"], d.P_mean, d.P_std)
    torch.testing.assert_close(t, fx["t"], rtol=0, atol=0)                 # our time rule, bit for bit
    drop = fx[f"{case}/drop_uniforms"] < d.label_drop_prob
    assert torch.equal(torch.where(drop, 10, fx["labels"]), fx[f"{case}/labels_dropped"])
    assert drop.any() == (case == "drop")

    total, losses = training_losses(model, model.streams, fx["x"], fx["labels"], cfg, plugins.hook,
                                    drop=drop, t=t, noise={"pixel": fx["noise"]})
    assert set(losses) == {"pixel"}
    torch.testing.assert_close(total.detach(), fx[f"{case}/loss"], rtol=LOSS_RTOL, atol=0)
    total.backward()

    names = official_names(model)
    graded = {names[n]: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(graded) == sorted(fx.meta[f"{case}/grad_names"])           # 56 tensors, none missing or extra
    for name, grad in graded.items():
        fx.check(grad, f"{case}/grads/{name}", rtol=1e-5, scaled_atol=GRAD_SCALED_ATOL)
    # the forward alone, as a diagnostic when the gradients disagree
    with torch.no_grad():
        z = add_noise(fx["x"], t, fx["noise"])
        fx.check(model(z, t, fx[f"{case}/labels_dropped"]).pixel, f"{case}/x_pred", rtol=0, atol=1e-5)


def test_drop_changes_the_loss_so_the_cases_are_told_apart():
    fx = compact("jit_train")
    assert abs(fx["nodrop/loss"].item() - fx["drop/loss"].item()) > 1e-5


def test_weight_decay_groups_are_the_official_ones():
    fx, cfg, plugins = compact("jit_train"), jit_config(), Plugins(enabled=[])
    model = official_model(cfg, plugins)
    names = official_names(model)
    by_id = {id(p): names[n] for n, p in model.named_parameters()}
    no_decay, decay = param_groups([model], weight_decay=0.05)
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 0.05)
    # the order inside a group is immaterial (AdamW updates each tensor on its own); the membership is not
    assert sorted(by_id[id(p)] for p in decay["params"]) == sorted(fx.meta["decay_names"])        # 23
    assert sorted(by_id[id(p)] for p in no_decay["params"]) == sorted(fx.meta["no_decay_names"])  # 33


@pytest.mark.parametrize("case", ["recipe", "wd"])
def test_adamw_lr_rule_and_both_emas_after_one_and_three_steps(case):
    fx, cfg, plugins = compact("jit_train"), jit_config(), Plugins(enabled=[])
    s = fx.meta["settings"]
    cfg.optim.blr, cfg.optim.weight_decay = s["cases"][case]["blr"], s["cases"][case]["weight_decay"]
    cfg.optim.warmup_epochs, cfg.optim.schedule = float(s["warmup_epochs"]), s["lr_schedule"]
    assert tuple(cfg.optim.betas) == tuple(s["betas"]) and tuple(cfg.optim.ema_decays) == (s["ema_decay1"],
                                                                                            s["ema_decay2"])
    base = peak_lr(cfg, s["batch_size"] * s["world_size"])
    assert base == pytest.approx(fx.meta[f"{case}/base_lr"], rel=1e-12)

    model = official_model(cfg, plugins)
    emas = [EMA(model, decay) for decay in cfg.optim.ema_decays]
    for ema, which in zip(emas, ("model_ema1", "model_ema2")):
        ema.load(from_official(compact("jit_tiny").checkpoint()[which])[0], model)
    optimizer = make_optimizer([model], cfg, base, torch.device("cpu"))
    params = dict(model.named_parameters())
    ours = {official: name for name, official in official_names(model).items()}
    named = fx.meta["named_tensors"]

    for k, step in enumerate(s["global_steps"]):
        lr = lr_at(cfg, step / s["steps_per_epoch"], base)                    # as Trainer.train_step sets it
        assert lr == pytest.approx(fx[f"{case}/lr"][k].item(), rel=1e-12)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=False)
        for p in params.values():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        for name in named:   # the official gradients of the compared tensors, where they are compared
            if f"G/step{k}/{name}" in fx:
                fx.fill(params[ours[name]].grad, f"G/step{k}/{name}")
        optimizer.step()
        for ema in emas:
            ema.update(model)
        if k + 1 in (1, 3):
            state = {"model": dict(model.named_parameters()), "ema1": emas[0].state_dict(model),
                     "ema2": emas[1].state_dict(model)}
            for which, sd in state.items():
                for name in named:
                    fx.check(sd[ours[name]], f"{case}/after{k + 1}/{which}/{name}", rtol=WEIGHT_RTOL,
                             atol=WEIGHT_RTOL * base)

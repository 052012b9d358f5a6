"""The fast training paths give the same numbers as the plain ones: LM head at loss positions only,
the in-place chunked loss, and LoRA dropout shared between layers with one input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medtune.train import lora_fast
from medtune.train.loss import IGNORE_INDEX, CausalLMLoss, chunked_ce_sum


def plain_loss(hidden, weight, labels):
    logits = hidden @ weight.T
    return nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("chunk", [3, 7, 64])
def test_chunked_loss_and_gradients_equal_plain_cross_entropy(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(20, 6, requires_grad=True)
    weight = torch.randn(11, 6, requires_grad=True)
    labels = torch.randint(0, 11, (20,))
    labels[[0, 5, 6, 7, 19]] = IGNORE_INDEX  # a chunk of 3 that is wholly ignored (5..7), and partly ignored ones
    ours = chunked_ce_sum(hidden, weight, labels, chunk=chunk, scale=0.5)
    g_h, g_w = torch.autograd.grad(ours, (hidden, weight))
    ref = plain_loss(hidden, weight, labels) * 0.5
    r_h, r_w = torch.autograd.grad(ref, (hidden, weight))
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert torch.allclose(g_h, r_h, atol=1e-6) and torch.allclose(g_w, r_w, atol=1e-6)
    assert g_h[[0, 5, 6, 7, 19]].abs().max() == 0


class TinyLM(nn.Module):
    """Just what CausalLMLoss needs: get_decoder() and get_output_embeddings()."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(13, 5)
        self.head = nn.Linear(5, 13, bias=False)
        self.calls: list[int] = []

    def get_decoder(self):
        outer = self

        class Dec(nn.Module):
            def forward(self, input_ids, attention_mask):
                return type("Out", (), {"last_hidden_state": torch.tanh(outer.emb(input_ids))})()

        return Dec()

    def get_output_embeddings(self):
        return self.head


def test_lm_head_runs_only_at_loss_positions(monkeypatch):
    torch.manual_seed(1)
    lm = TinyLM()
    ids = torch.randint(0, 13, (2, 9))
    attn = torch.ones_like(ids)
    loss_mask = torch.zeros_like(ids)
    loss_mask[0, 6:] = 1  # an answer span: positions 6..8 are predicted from 5..7
    loss_mask[1, 8] = 1
    seen = {}
    from medtune.train import loss as loss_mod

    real = loss_mod.chunked_ce_sum

    def spy(hidden, weight, labels, **kw):
        seen["rows"] = hidden.shape[0]
        return real(hidden, weight, labels, **kw)

    monkeypatch.setattr(loss_mod, "chunked_ce_sum", spy)
    ours = CausalLMLoss(lm, chunk=4)(ids, attn, loss_mask, scale=1.0)
    assert seen["rows"] == 4  # 3 + 1 loss positions, not 2 x 8 rows
    hidden = torch.tanh(lm.emb(ids))[:, :-1].reshape(-1, 5)
    labels = torch.where(loss_mask[:, 1:].bool(), ids[:, 1:], IGNORE_INDEX).reshape(-1)
    ref = plain_loss(hidden, lm.head.weight, labels)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    g_ours = torch.autograd.grad(ours, lm.emb.weight)[0]
    g_ref = torch.autograd.grad(plain_loss(torch.tanh(lm.emb(ids))[:, :-1].reshape(-1, 5), lm.head.weight, labels), lm.emb.weight)[0]
    assert torch.allclose(g_ours, g_ref, atol=1e-6)


def test_lane_dropout_rate_scale_and_backward():
    torch.manual_seed(0)
    x = torch.ones(400, 1000, requires_grad=True)
    y = lora_fast.LaneDropout.apply(x, 0.05)
    keep = y != 0
    assert abs(1 - float(keep.float().mean()) - 0.05) < 0.002  # 400k draws: sd of the rate is 0.0003
    scale = 1 / (1 - round(0.05 * 65536) / 65536)
    assert torch.allclose(y[keep], torch.full_like(y[keep], scale))
    (g,) = torch.autograd.grad((y * 3).sum(), x)
    assert torch.equal(g, keep * 3 * scale)
    # the 16-bit lanes are all used: no lane is always kept or always dropped
    lanes = keep.flatten()[: 4 * 100000].view(-1, 4).float().mean(0)
    assert ((lanes > 0.93) & (lanes < 0.97)).all(), lanes


def test_seeded_lane_dropout_repeats():
    x = torch.randn(64, 33)
    torch.manual_seed(5)
    a = lora_fast.LaneDropout.apply(x, 0.3)
    torch.manual_seed(5)
    b = lora_fast.LaneDropout.apply(x, 0.3)
    assert torch.equal(a, b) and not torch.equal(a, x * (1 / 0.7))


def test_peft_layers_with_one_input_share_one_mask(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    n_layers = model.config.num_hidden_layers
    assert lora_fast.install(model) == (7 * n_layers, 7 * n_layers)
    attn = model.base_model.model.model.layers[0].self_attn
    mlp = model.base_model.model.model.layers[0].mlp
    model.train()
    x = torch.randn(2, 5, attn.q_proj.in_features)
    dq, dk, dv = (m.lora_dropout["default"](x) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
    assert dq is dk is dv and not torch.equal(dq, x)  # one draw, one copy for the three projections
    other = mlp.gate_proj.lora_dropout["default"](x.clone())
    assert not torch.equal(other, dq)  # a different input tensor gets its own mask
    model.eval()
    assert attn.q_proj.lora_dropout["default"](x) is x
    # a training step through the model still reaches every adapter
    model.train()
    out = model(input_ids=torch.randint(0, 50, (2, 8)))
    out.logits.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_fused_lora_update_equals_peft(tiny_llama):
    """Same outputs and the same gradients (weights and input) as peft's own forward, without dropout."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def build():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM", init_lora_weights=False))
        return model.train()

    ids = torch.randint(0, 50, (2, 9))
    results = []
    for fast in (False, True):
        model = build()
        if fast:
            assert lora_fast.install(model)[1] > 0
        loss = model(input_ids=ids).logits.float().square().mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((float(loss.detach()), grads))
    (l0, g0), (l1, g1) = results
    assert l1 == pytest.approx(l0, rel=1e-5) and g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        assert torch.allclose(g0[n], g1[n], rtol=1e-4, atol=1e-6), n
    # a disabled adapter falls back to peft's own path
    model = build()
    lora_fast.install(model)
    with model.disable_adapter():
        base = model(input_ids=ids).logits
    assert not torch.allclose(base, model(input_ids=ids).logits)

"""Cross-entropy on the LM head without materialising (batch, seq, vocab) logits.

:class:`ChunkedLinearCE` computes the summed token loss chunk by chunk; each chunk's logits exist
only while its gradient (softmax - one-hot) is formed, in the forward pass, so backward needs no
logits at all and none are recomputed. Peak extra memory is one chunk of fp32 logits
(``chunk x vocab``) instead of the full ``batch x seq x vocab`` tensor (plus its fp32 copy and
softmax) that a plain ``CrossEntropyLoss`` on the model's logits keeps for backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

IGNORE_INDEX = -100


_BUFFERS: dict[tuple[str, int], torch.Tensor] = {}


def _logits(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``h @ weight.T`` in fp32, written into one reused buffer per (device, vocab).

    A fresh chunk of logits is hundreds of MB (1024 x 49152 fp32 = 201 MB): the allocator hands it
    out as new pages each time, and faulting them in made this GEMM run at about half the speed of
    the same GEMM into warm memory (profiled on the CPU). The buffer is overwritten chunk by chunk;
    nothing outside the loss ever holds it. Under autocast (and with 16-bit weights) the GEMM runs in
    that dtype instead, without the buffer: ``torch.mm(out=)`` would bypass autocast.
    """
    if h.dtype != torch.float32 or weight.dtype != torch.float32 or torch.is_autocast_enabled(h.device.type):
        return (h @ weight.T).float()  # the GEMM in the autocast / weights' dtype, like the model's own LM head
    key = (str(h.device), weight.shape[0])
    buf = _BUFFERS.get(key)
    if buf is None or buf.shape[0] < h.shape[0]:
        buf = _BUFFERS[key] = torch.empty(h.shape[0], weight.shape[0], device=h.device)
    out = buf[: h.shape[0]]
    return torch.mm(h, weight.T, out=out)


class ChunkedLinearCE(torch.autograd.Function):
    """``sum_i CE(hidden_i @ weight.T, labels_i) * scale`` with gradients formed in the forward pass."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int, scale: float) -> torch.Tensor:
        # hidden (N, H), weight (V, H), labels (N,) with IGNORE_INDEX where no loss is taken.
        need_dw = weight.requires_grad
        grad_h = torch.zeros_like(hidden)
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_dw else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        on_cpu = hidden.device.type == "cpu"
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            y = labels[start : start + chunk]
            valid = y != IGNORE_INDEX
            # Skipping settled chunks needs the answer on the host: worth it on the CPU, a sync per chunk elsewhere.
            all_valid = bool(valid.all()) if on_cpu else False
            if on_cpu and not all_valid and not bool(valid.any()):
                continue
            target = y.clamp(min=0)[:, None]
            # One buffer, updated in place: logits -> exp(logits - max) -> softmax -> softmax - one_hot.
            probs = _logits(h, weight)  # (chunk, vocab) fp32
            target_logit = probs.gather(1, target)
            top = probs.amax(dim=1, keepdim=True)
            probs.sub_(top).exp_()
            norm = probs.sum(dim=1, keepdim=True)
            token_loss = (top + norm.log() - target_logit)[:, 0]  # logsumexp - target logit
            probs.div_(norm)
            probs.scatter_add_(1, target, torch.full_like(target_logit, -1.0))
            if not all_valid:
                token_loss = token_loss * valid
                probs *= valid[:, None]
            total += token_loss.sum()
            # d(sum CE)/d logits = softmax - one_hot, zero on ignored rows.
            grad_h[start : start + chunk] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w += probs.T @ h.float()
        ctx.save_for_backward(grad_h, grad_w if grad_w is not None else torch.empty(0))
        ctx.need_dw = need_dw
        ctx.scale = scale
        return total * scale

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        grad_h, grad_w = ctx.saved_tensors
        g = grad_out * ctx.scale
        dh = grad_h * g.to(grad_h.dtype)
        dw = (grad_w * g).to(grad_w.dtype) if ctx.need_dw else None
        return dh, dw, None, None, None


def chunked_ce_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, chunk: int = 1024, scale: float = 1.0) -> torch.Tensor:
    """Summed next-token loss; ``hidden`` (..., H) and ``labels`` (...) already shifted and aligned."""
    return ChunkedLinearCE.apply(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1), chunk, scale)


def summed_token_loss(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, chunk: int, scale: float,
                      **decoder_kwargs: Any) -> torch.Tensor:
    """``scale`` x the summed next-token loss of a causal LM on the positions where ``labels[:, 1:]`` is not
    :data:`IGNORE_INDEX`; the LM head runs on those rows only (the answer span under answer_only, real
    tokens under all_tokens): the other rows' full-vocabulary logits are never formed."""
    hidden = model.get_decoder()(input_ids=input_ids, **decoder_kwargs).last_hidden_state
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # (batch * (seq - 1), H)
    targets = labels[:, 1:].reshape(-1)
    rows = (targets != IGNORE_INDEX).nonzero()[:, 0]
    if rows.numel() < targets.numel():
        hidden, targets = hidden.index_select(0, rows), targets.index_select(0, rows)
    head = model.get_output_embeddings()
    if getattr(head, "medtune_chunked_loss", False):  # through the module, so FSDP2 unshards its weight first
        return head(hidden, targets=targets, chunk=chunk, scale=scale)
    return chunked_ce_sum(hidden, head.weight, targets, chunk=chunk, scale=scale)


def _loss_head(head: nn.Module) -> None:
    """Let the LM head module compute the chunked loss when called with ``targets``: FSDP2 gathers a
    module's sharded weight in that module's forward hooks (and reduce-scatters its gradient after), so
    the weight is used inside a call of the module that owns it, never read off it from outside."""
    own = head.forward

    def forward(hidden: torch.Tensor, targets: torch.Tensor | None = None, chunk: int = 1024, scale: float = 1.0) -> torch.Tensor:
        if targets is None:
            return own(hidden)
        return chunked_ce_sum(hidden, head.weight, targets, chunk=chunk, scale=scale)

    head.forward = forward
    head.medtune_chunked_loss = True


class CausalLMLoss(nn.Module):
    """Wraps a causal LM so one ``forward`` returns the scaled summed token loss."""

    def __init__(self, model: nn.Module, chunk: int = 1024):
        super().__init__()
        self.model = model
        self.chunk = chunk

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor, scale: float) -> torch.Tensor:
        # input_ids, attention_mask, loss_mask: (batch, seq). Position t predicts token t+1.
        labels = input_ids.masked_fill(loss_mask == 0, IGNORE_INDEX)
        return summed_token_loss(self.model, input_ids, labels, self.chunk, scale, attention_mask=attention_mask)


def install(model: nn.Module, chunk: int) -> None:
    """The answer-position chunked loss as the training forward of ``model`` (a ``*ForCausalLM``, or a
    peft model around one): with ``labels`` in training mode it returns only the loss, summed over the
    label tokens and divided by ``num_items_in_batch`` (the engine's count of loss tokens in the whole
    global batch), without logits; anything else runs the model's own forward.

    Why not the library's loss: transformers' loss forms the (batch, seq, vocab) logits and their fp32
    copy and softmax, and Liger's fused linear cross-entropy (the GPU path) is a Triton kernel, which
    does not run on the CPU; this one forms one chunk of logits at a time, on the loss rows only.
    The forward is replaced on the model object (as Liger does), so a DDP / FSDP wrapper around it
    still runs the loss inside its own forward and synchronises the gradients it makes.
    """
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    own_forward = causal.forward
    _loss_head(causal.get_output_embeddings())

    def forward(input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, num_items_in_batch: Any = None, **kwargs: Any) -> Any:
        if labels is None or input_ids is None or not causal.training or kwargs.get("inputs_embeds") is not None:
            return own_forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        from transformers.modeling_outputs import CausalLMOutputWithPast

        for unused in ("use_cache", "return_dict", "output_attentions", "output_hidden_states", "logits_to_keep"):
            kwargs.pop(unused, None)
        n = int(num_items_in_batch) if num_items_in_batch is not None else int((labels[:, 1:] != IGNORE_INDEX).sum())
        loss = summed_token_loss(causal, input_ids, labels, chunk, 1.0 / max(n, 1), attention_mask=attention_mask,
                                 use_cache=False, **kwargs)
        return CausalLMOutputWithPast(loss=loss)

    causal.forward = forward

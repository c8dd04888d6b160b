"""The v2 trainer's model pieces: vocabulary growth, the pooled visual features, the forward pass and the losses.

The forward pass runs the decoder by hand so that it can return the hidden state entering decoder layer 2 (read by
the training-only ds and cell heads) and the per-layer inputs the attention aux scores; `losses` combines the LM loss
with those aux losses (see `train_v2`'s docstring for what each teaches).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .train import lm_loss


def grow(model, vocab: int, seed: int):
    """Resize embeddings and LM head to `vocab` rows in place; v1 rows kept, new rows initialised as v1's were."""
    old = model.config.text_config.vocab_size
    if old >= vocab:
        return model
    g = torch.Generator().manual_seed(seed)
    emb, head = model.model.language_model.embed_tokens, model.lm_head
    new_e = torch.nn.Embedding(vocab, emb.weight.shape[1], padding_idx=emb.padding_idx)
    new_h = torch.nn.Linear(head.weight.shape[1], vocab, bias=False)
    with torch.no_grad():
        new_e.weight.copy_(torch.cat([emb.weight, torch.randn(vocab - old, emb.weight.shape[1], generator=g)]))
        new_h.weight.copy_(torch.cat([head.weight, 0.02 * torch.randn(vocab - old, head.weight.shape[1], generator=g)]))
    model.model.language_model.embed_tokens, model.lm_head = new_e, new_h
    model.config.text_config.vocab_size = vocab
    return model


def visual_features(model, pixel_values, sides, frames):
    """Tower -> per-frame average pooling to side x side -> projector. Returns [sum_f side_f^2, D]. The tower gets
    gradients only when its parameters ask for them (train_v2 --tower-lr-frac)."""
    tower = model.model.vision_tower
    with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())):
        hs = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-1][:, 1:]
    n = int(math.isqrt(hs.shape[1]))
    out, f0 = [], 0
    for side, t in zip(sides, frames):
        x = hs[f0:f0 + t]
        f0 += t
        if side != n:  # same pooling as methods/_util.pool_grid (adaptive average pool over the patch grid)
            g = x.transpose(1, 2).reshape(t, -1, n, n)
            x = F.adaptive_avg_pool2d(g, side).flatten(2).transpose(1, 2)
        out.append(x.reshape(-1, x.shape[-1]))
    return model.model.multi_modal_projector(torch.cat(out))


def forward(model, b, ds_layer: int | None):
    """Returns the hidden states entering each decoder layer (inputs_embeds first), the logits, and the state after
    `ds_layer`."""
    feats = visual_features(model, b["pixel_values"], b["sides"], b["frames"])
    emb = model.model.language_model.get_input_embeddings()(b["input_ids"])
    mask = (b["input_ids"] == model.config.image_token_id).unsqueeze(-1)
    emb = emb.masked_scatter(mask, feats.to(emb.dtype))
    out = model.model.language_model(inputs_embeds=emb, attention_mask=b["attention_mask"],
                                      output_hidden_states=True)
    mid = out.hidden_states[ds_layer] if ds_layer is not None else None
    return out.hidden_states, model.lm_head(out.last_hidden_state), mid


def attention_loss(model, hidden, b):
    """-log(attention mass of decoder layer `at_layers[n]`'s head `at_heads[n]`, at each query, on its targets),
    averaged over every query. hidden: the states entering each layer (forward's first output)."""
    total, count = 0.0, 0
    w = b.get("at_w")  # per-query weights (train_v2 --w-shared): a weighted mean
    for layer in b["at_layers"].unique().tolist():
        sel = b["at_layers"] == layer
        part = {k: b[k][sel] for k in ("at_rows", "at_cols", "at_mask", "at_heads")}
        if w is None:
            total = total + attention_loss_at(model, hidden[layer], part, layer).mean() * int(sel.sum())
            count += int(sel.sum())
        else:
            total = total + (attention_loss_at(model, hidden[layer], part, layer) * w[sel]).sum()
            count += float(w[sel].sum())
    return total / count


def attention_loss_at(model, emb, b, layer: int):
    """The loss of each query [n] of one decoder layer: emb [B, L, D] is the hidden state entering it."""
    from transformers.models.llama.modeling_llama import rotate_half

    rows, cols, tmask, heads = b["at_rows"], b["at_cols"], b["at_mask"], b["at_heads"]
    lm = model.model.language_model
    attn = lm.layers[layer].self_attn
    d = attn.head_dim
    x = lm.layers[layer].input_layernorm(emb)
    L, n = x.shape[1], len(rows)
    cos, sin = lm.rotary_emb(x, position_ids=torch.arange(L).unsqueeze(0))
    cos, sin = cos[0], sin[0]
    kv = heads // (attn.config.num_attention_heads // attn.config.num_key_value_heads)
    # index_select, not x[rows]: rows repeat, and on two threads x[rows]'s backward (an accumulating index_put) adds
    # them in a racing order (run-to-run differences of ~1e-7 that grew over a stage); index_select's backward adds them
    # in one order, the order one thread always used.
    k = attn.k_proj(x.index_select(0, rows)).view(n, L, -1, d)[torch.arange(n), :, kv]  # [n, L, d]
    k = k * cos + rotate_half(k) * sin
    q = attn.q_proj(x[rows, cols]).view(n, -1, d)[torch.arange(n), heads]  # [n, d]
    q = q * cos[cols] + rotate_half(q) * sin[cols]
    sc = torch.einsum("nd,nld->nl", q, k) * attn.scaling
    sc = sc.masked_fill(torch.arange(L).unsqueeze(0) > cols.unsqueeze(1), float("-inf"))
    return -torch.log((sc.softmax(-1) * tmask).sum(-1) + 1e-6)


def weighted_lm_loss(logits, b, kind_w: dict[str, float]) -> torch.Tensor:
    """The LM loss with each turn's answer tokens (and its </s>) weighted by its kind (default 1): a weighted mean over
    the answer tokens, times b["lm_w"] [B, L] where the batch has it (--w-shared). logits [B, L, V];
    b["turns"][i] = [(start, end, kind), ...] spans of answer positions."""
    labels = b["labels"]
    w = b["lm_w"].to(logits.dtype).clone() if "lm_w" in b else torch.ones(labels.shape, dtype=logits.dtype)
    for i, spans in enumerate(b["turns"]):
        for a, e, kind in spans:
            w[i, a:e] *= kind_w.get(kind, 1.0)
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="none")
    w = w[:, 1:].flatten() * (labels[:, 1:].flatten() != -100)
    return (ce * w).sum() / w.sum()


def teacher_loss(model, teacher, b, temp: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions at every position that predicts an answer token (or its
    </s>), at temperature `temp` (scaled by temp^2). The teacher may have fewer vocabulary rows (v1: 64): its missing
    rows get probability 0. b: a batch whose every turn the teacher knows (v1 kinds, one turn)."""
    rows, cols = [], []
    for i, spans in enumerate(b["turns"]):
        for a, e, _ in spans:
            rows += [i] * (e - a)
            cols += list(range(a - 1, e - 1))
    rows, cols = torch.tensor(rows), torch.tensor(cols)
    _, logits, _ = forward(model, b, None)
    with torch.no_grad():
        _, t_logits, _ = forward(teacher, b, None)
    s = F.log_softmax(logits[rows, cols] / temp, -1)
    t = F.softmax(t_logits[rows, cols] / temp, -1)
    return (t * (torch.log(t + 1e-12) - s[:, :t.shape[1]])).sum(-1).mean() * temp ** 2


def losses(model, ds_head, b, args, cell_head=None) -> tuple[torch.Tensor, dict]:
    """LM loss on answers + the content-token (ds), start/end cell and attention aux losses of one batch."""
    hidden, logits, mid = forward(model, b, 2 if args.w_ds > 0 or args.w_cell > 0 else None)
    # A clip can end up with no askable question (a direction-heavy mix, no object unique by colour and shape): no
    # answer tokens, and a mean over none would be NaN.
    kind_w = getattr(args, "kind_loss_w", None)
    if not bool((b["labels"] != -100).any()):
        loss = logits.sum() * 0.0
    else:
        # The plain mean without weights: the same value, and the same float rounding earlier stages trained with.
        loss = weighted_lm_loss(logits, b, kind_w or {}) if kind_w or "lm_w" in b else lm_loss(logits, b["labels"])
    parts = {"lm": loss.item()}
    if args.w_cell > 0 and len(b["cell_rows"]):
        # The shape word of a direction question names its object's start and end cells (two 9-way heads): the two
        # reads that layer 1's heads 0/1 make must arrive as positions the layers above can compare.
        c = cell_head(mid[b["cell_rows"], b["cell_cols"]]).view(-1, 2, 9)
        l_cell = F.cross_entropy(c.flatten(0, 1), b["cell_tgt"].flatten())
        loss = loss + args.w_cell * l_cell
        parts["cell"] = l_cell.item()
    if args.w_ds > 0 and len(b["ds_rows"]):
        l_ds = F.cross_entropy(ds_head(mid[b["ds_rows"], b["ds_cols"]]), b["ds_tgt"])
        loss = loss + args.w_ds * l_ds
        parts["ds"] = l_ds.item()
    if args.w_att > 0 and len(b["at_rows"]):
        l_att = attention_loss(model, hidden, b)
        loss = loss + args.w_att * l_att
        parts["att"] = l_att.item()
    return loss, parts

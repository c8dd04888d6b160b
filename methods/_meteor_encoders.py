"""METEOR stages 1 and 2 on a multi-encoder model (see methods/meteor.py for the method and its parameters).

Stage 1, inside each encoder, split into three depth segments (ours: the CLIP tower's 4 layers as [0], [1, 2],
[3]; the conv encoder's three stages): after the shallow segment the tokens most redundant with the mean token
(cosine) go, taking half the encoder's cut; at the deep segment the rest goes by importance: CLS attention in the
ViT (the deep layer's own q/k), and, for the conv encoder, which has neither CLS nor attention, the L2 norm of its
last stage's activations (ours: the usual CNN saliency). The ViT runs its later layers on the survivors only;
a convolution needs its whole grid, so the conv encoder scores its stages and keeps its survivors at the output.
Budgets: k_b^l = k_b r^l / sum r, r^l the encoder's feature rank stored with the model.

Stage 2, after each encoder's projector: mutual redundancy R_i^j of token i of encoder j = its cosine similarity
to the other encoders' tokens, averaged over them (the paper sums; the mean lets encoders with different token
counts compare). Tokens go one at a time, most redundant first, R recomputed over the survivors each time (ours:
the paper's one-shot top-k would drop both copies of something two encoders both carry).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from backends.state import FrameTokens, RunState
from methods._util import cls_attention


def rank_budgets(total: int, ranks: list[float], sizes: list[int]) -> list[int]:
    """k_b^l = total * r^l / sum r, rounded by largest remainder, each within 1..size; what a full encoder cannot
    take goes to the others in proportion to their ranks. Sums to min(total, sum sizes)."""
    total = max(len(sizes), min(total, sum(sizes)))
    out, free = [0] * len(sizes), list(range(len(sizes)))
    while free:
        left = total - sum(out)
        share = [left * ranks[i] / sum(ranks[j] for j in free) for i in free]
        base = [math.floor(s) for s in share]
        order = sorted(range(len(free)), key=lambda t: base[t] - share[t])
        for t in order[: left - sum(base)]:
            base[t] += 1
        full = [i for i, b in zip(free, base) if out[i] + b >= sizes[i]]
        if not full:
            for i, b in zip(free, base):
                out[i] = max(1, out[i] + b)
            break
        for i in full:
            out[i] = sizes[i]
        free = [i for i in free if i not in full]
    return out


def redundancy(x: torch.Tensor) -> torch.Tensor:
    """x: [F, n, C]. Cosine similarity of each token to the frame's mean token: [F, n] (high = redundant)."""
    return F.cosine_similarity(x.float(), x.float().mean(1, keepdim=True), dim=-1)


def _keep(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per frame, the rows of the k highest scores in ascending order: [F, k]."""
    return scores.topk(k, dim=1).indices.sort(1).values


def _take(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [F, n, ...] rows [F, k] -> [F, k, ...]."""
    return x.gather(1, rows.view(*rows.shape, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:]))


def segments(depth: int) -> tuple[int, int]:
    """First layer of the middle and of the deep segment of a `depth`-layer encoder (4 -> 1, 3)."""
    return max(1, round(depth / 3)), max(1, round(2 * depth / 3))


def clip_stage1(ad, pixel_values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ViT with stage-1 pruning inside: (feature-layer states of the survivors [F, k, Dv], their patch
    indices [F, k]). k = every patch runs the tower unchanged."""
    tower, pre = ad.vision_tower, ad.num_prefix_tokens
    h = tower.embeddings(pixel_values)
    if hasattr(tower, "pre_layrnorm"):
        h = tower.pre_layrnorm(h)
    n = h.shape[1] - pre
    idx = torch.arange(n, device=h.device).expand(h.shape[0], n)
    mid, deep = segments(ad.feature_depth)
    n_mid = n - (n - k + 1) // 2  # the shallow cut takes half of what goes
    for i, layer in enumerate(ad.vision_layers[: ad.feature_depth]):
        if i == mid and n_mid < idx.shape[1]:
            rows = _keep(-redundancy(h[:, pre:]), n_mid)
            h, idx = torch.cat([h[:, :pre], _take(h[:, pre:], rows)], 1), _take(idx, rows)
        if i == deep and k < idx.shape[1]:
            q, kk = ad.tower_qk(i, h)
            rows = _keep(cls_attention(q, kk, ad.vision_heads), k)
            h, idx = torch.cat([h[:, :pre], _take(h[:, pre:], rows)], 1), _take(idx, rows)
        h = layer(h, None)
    return h[:, pre:], idx


def conv_stage1(ad, pixel_values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv encoder scored at its first stage (redundancy, pooled to its output grid) and last (activation
    norm): (survivors' tokens [F, k, Dv], their cell indices [F, k])."""
    states = ad.conv_forward(pixel_values)
    side = ad.encoders[1].grid[0]
    shallow = F.adaptive_avg_pool2d(states[0], (side, side)).flatten(2).transpose(1, 2)  # [F, n, C0]
    deep = states[-1].flatten(2).transpose(1, 2)  # [F, n, C] before the output norm
    tokens = ad.conv_tokens(states[-1])
    n = tokens.shape[1]
    idx = torch.arange(n, device=tokens.device).expand(tokens.shape[0], n)
    n_mid = n - (n - k + 1) // 2
    if n_mid < n:
        rows = _keep(-redundancy(shallow), n_mid)
        tokens, deep, idx = _take(tokens, rows), _take(deep, rows), _take(idx, rows)
    if k < idx.shape[1]:
        rows = _keep(deep.float().norm(dim=-1), k)
        tokens, idx = _take(tokens, rows), _take(idx, rows)
    return tokens, idx


def stage1(state: RunState, budgets: list[int]) -> None:
    """Fill `state.frames` with each encoder's stage-1 survivors, encoder by encoder (slot order)."""
    ad = state.adapter
    (clip, clip_idx), (conv, conv_idx) = (clip_stage1(ad, state.pixel_values, budgets[0]),
                                          conv_stage1(ad, state.pixel_values, budgets[1]))
    total, off = ad.tokens_per_image, ad.encoders[1].offset
    state.frames = []
    for f in range(clip.shape[0]):
        slots = torch.cat([clip_idx[f], conv_idx[f] + off]).cpu()
        hidden = torch.cat([clip[f], conv[f].to(clip.dtype)])
        state.frames.append(FrameTokens(hidden, torch.eye(total, dtype=torch.float32)[slots], slots))


def mutual_keep(z: torch.Tensor, encoder: torch.Tensor, k: int) -> torch.Tensor:
    """Stage 2 on one frame. z: [n, D] projected tokens, encoder: [n] which encoder each came from.

    Removes the most mutually redundant token until k remain: R_i = mean cosine similarity of token i to the
    surviving tokens of the other encoders (0 when none survive). Returns the kept rows, ascending."""
    zn = F.normalize(z.float(), dim=-1)
    sim = zn @ zn.T  # [n, n]
    other = (encoder[:, None] != encoder[None, :]).to(sim.device)
    alive = torch.ones(z.shape[0], dtype=torch.bool, device=sim.device)
    while int(alive.sum()) > k:
        peers = other & alive[None, :]
        r = (sim * peers).sum(1) / peers.sum(1).clamp(min=1)
        r = r.masked_fill(~alive, float("-inf"))
        alive[int(r.argmax())] = False
    return alive.nonzero().flatten()


def stage2(state: RunState, keep: float) -> None:
    """Each frame keeps round(keep x its stage-1 survivors), the least mutually redundant after projection."""
    ad = state.adapter
    off = ad.encoders[1].offset
    for i, frame in enumerate(state.frames):
        n = frame.hidden.shape[0]
        k = max(1, min(n, round(keep * n)))
        if k < n:
            z = ad.project_tokens(frame.hidden, frame.index)
            state.frames[i] = frame.select(mutual_keep(z, (frame.index >= off).long(), k).cpu())

"""Training batches of the v2 task: packed image conversations and videos pooled Dynamic-VLM style.

An image sequence is one scene followed by 1-5 packed turns (`<s> <image>x64 q1 answer : a1 </s> q2 answer : a2
</s> ...`, exactly what the chat template renders for a multi-turn `messages` list), kinds drawn from the five v1
kinds plus `describe`. A video sequence is T frames, each average-pooled from the 8x8 patch grid to side x side
tokens (side drawn per clip: 8 = full frames, else 2..8, as Dynamic-VLM trains its LLM on variable per-frame counts),
followed by 1-3 video questions. Loss is on answers and `</s>` only.

Besides ids and labels, a batch carries the targets of two training-only auxiliary losses (see `train_v2`):
`ds` (a content token predicts its one-word answer), `att` (an attention head of the content token, or of the
`a` that opens each described object, should land on the image tokens of the cell it is about: head 0 in the first
frame, head 1 in the last; decoder layer 0 for one-token queries, layer 1 for the others) and `cell` (a direction
question's shape word names the cells its object starts and ends in).
"""

from __future__ import annotations

import numpy as np
import torch

from . import arch
from .arch import COLORS
from .clips import VIDEO_KINDS, sample_clip, sample_video_questions
from .render_train import render, resized
from .scenes import KINDS, make_question, sample_scene
from .train import PCELL, Vocab, pixels

IMAGE_WEIGHTS = {"color": 0.12, "shape_at": 0.22, "count": 0.1, "total": 0.06, "exists": 0.12, "describe": 0.38}
VIDEO_WEIGHTS = {"direction": 0.45, "at_start": 0.2, "at_end": 0.2, "vtotal": 0.15}
IMAGE_KINDS = KINDS + ["describe"]


def cell_of_tokens(side: int) -> np.ndarray:
    """Grid cell (0..8) of each pooled token's centre on a side x side grid (row-major)."""
    return np.array([int((r + 0.5) * 3 / side) * 3 + int((c + 0.5) * 3 / side) for r in range(side)
                     for c in range(side)])


def sample_image_turns(objs, rng, n: int, weights: dict | None = None, max_describe: int = 1) -> list[dict]:
    """n distinct turns about one scene, at most `max_describe` descriptions (each worded differently). Kinds drawn
    by `weights` (default IMAGE_WEIGHTS)."""
    w = np.array([(weights or IMAGE_WEIGHTS)[k] for k in IMAGE_KINDS])
    out, seen = [], set()
    for _ in range(20 * n):
        if len(out) == n:
            break
        kind = IMAGE_KINDS[int(rng.choice(len(IMAGE_KINDS), p=w / w.sum()))]
        q = make_question(objs, kind, rng)
        if q is None or q["question"] in seen or (
                kind == "describe" and sum(t["kind"] == "describe" for t in out) >= max_describe):
            continue
        seen.add(q["question"])
        out.append(q)
    return out


def content_index(qi: list[int], kind: str, pos_ids: dict[int, int]) -> int:
    """Index in the question's ids of its content token: the position phrase (shape_at, at_start, at_end) or the shape
    word (before "?", or before "move ?"). The ds aux reads the token the attention aux writes to (reading "move"
    instead left direction at its prior)."""
    if kind in ("shape_at", "at_start", "at_end"):
        return next(j for j, t in enumerate(qi) if t in pos_ids)
    return len(qi) - (3 if kind == "direction" else 2)


class Builder:
    """Accumulates sequences and their aux targets, then pads them into one batch."""

    def __init__(self, voc: Vocab, color_att: bool = False, w_shared: float = 1.0, shared_scope: str = "object"):
        self.voc, self.color_att, self.w_shared, self.scene_scope = voc, color_att, w_shared, shared_scope == "scene"
        self.seqs, self.labels, self.ds, self.att, self.turns, self.cells = [], [], [], [], [], []
        self.heavy = []  # (row, position): a label position weighted w_shared (a shared-colour object's shape word)

    def add(self, ids: list[int], lab: list[int], qas: list[dict], frame_slots: list[np.ndarray], cells_fn):
        """Append the QA turns of `qas` after `ids`. frame_slots[f] = sequence positions of frame f's tokens;
        cells_fn(f) = cell of each of frame f's tokens. Records per-turn answer spans for evaluation."""
        voc, row = self.voc, len(self.seqs)
        pos_ids = {voc.tok.convert_tokens_to_ids(arch.position_token(p)): i for i, p in enumerate(arch.POSITIONS)}
        spans = []
        for q in qas:
            qi = voc.q(q["question"])
            start = len(ids)
            kind = q["kind"]
            content = start + content_index(qi, kind, pos_ids)
            if kind in ("color", "shape_at", "exists", "direction", "at_start", "at_end"):
                self.ds.append((row, content, voc.a(q["answer"])))
            # (query position, frame index, cell, head, layer): head 0 reads the first (or only) frame, head 1 the
            # last, so a direction question gets the start and the end position from two heads it can compare.
            # Queries that a token's own embedding can pose (a position phrase, a unique shape) train decoder layer
            # 0; those that need the tokens before them (the coloured shape of a direction question, the next object
            # of a description) train layer 1, where the query has read them.
            targets = []
            last = len(frame_slots) - 1
            if kind in ("shape_at", "at_start", "at_end"):
                cell = pos_ids[qi[content - start]]
                targets.append((content, last, cell, 1, 0) if kind == "at_end" else (content, 0, cell, 0, 0))
            elif kind == "color":  # the shape word finds the unique shape's cell
                targets.append((content, 0, q["cell"], 0, 0))
            elif kind == "direction":  # the shape word: where the object starts (head 0) and ends (head 1)
                targets += [(content, 0, q["cells"][0], 0, 1), (content, last, q["cells"][1], 1, 1)]
                self.cells.append((row, content, *q["cells"]))
            ans = voc.tok(q["answer"], add_special_tokens=False)["input_ids"]
            a0 = start + len(qi) + len(voc.cue)
            if kind == "describe":  # each 'a' opens an object, in reading order (= q["cells"] order)
                opens = [j for j, t in enumerate(ans) if t == voc.a("a")]
                colors = [ans[j + 1] for j in opens]
                shared_scene = len(set(colors)) < len(colors)
                for j, c, col in zip(opens, q["cells"], colors):
                    # An object whose colour another one shares: its colour word's look-up cannot go by colour alone
                    # (the description errors that remain give it the neighbour's shape), so with w_shared its
                    # attention target and its shape word weigh more. Scope "scene": every object of a scene where
                    # two share a colour, and its 'a' and colour word too (the errors left after that copy a
                    # same-colour neighbour's colour onto the next object).
                    w = self.w_shared if colors.count(col) > 1 or (self.scene_scope and shared_scene) else 1.0
                    # 'a' predicts the colour: its query should find the object (weighted in the scene scope only)
                    targets.append((a0 + j, 0, c, 0, 1, w if self.scene_scope else 1.0))
                    if self.color_att:  # the colour word predicts the shape: the same object, read again
                        targets.append((a0 + j + 1, 0, c, 0, 1, w))
                    if w != 1.0:
                        words = (1, 2) if self.scene_scope else (2,)  # colour (+1) and shape (+2) after the 'a'
                        self.heavy += [(row, a0 + j + k) for k in words]
            for qpos, f, cell, head, layer, *w in targets:  # a target's weight (w_shared) is optional: default 1
                slots = frame_slots[f][cells_fn(f) == cell]
                if len(slots):
                    self.att.append((row, qpos, slots, head, layer, w[0] if w else 1.0))
            ids += qi + voc.cue + ans + [voc.eos]
            lab += [-100] * (len(qi) + len(voc.cue)) + ans + [voc.eos]
            spans.append((a0, a0 + len(ans) + 1, kind))
        self.seqs.append(ids)
        self.labels.append(lab)
        self.turns.append(spans)

    def tensors(self) -> dict:
        voc = self.voc
        L, B = max(len(s) for s in self.seqs), len(self.seqs)
        ids = torch.full((B, L), voc.pad, dtype=torch.long)
        lab = torch.full((B, L), -100, dtype=torch.long)
        att = torch.zeros((B, L), dtype=torch.long)
        for i, (s, lb) in enumerate(zip(self.seqs, self.labels)):
            ids[i, :len(s)], lab[i, :len(lb)], att[i, :len(s)] = torch.tensor(s), torch.tensor(lb), 1
        tmask = torch.zeros((len(self.att), L), dtype=torch.bool)
        for n, (_, _, slots, *_) in enumerate(self.att):
            tmask[n, torch.as_tensor(slots)] = True
        extra = {}
        if self.heavy:  # only then: batches without it are the tensors they were
            extra["at_w"] = torch.tensor([a[5] for a in self.att])
            extra["lm_w"] = torch.ones((B, L))
            for i, j in self.heavy:
                extra["lm_w"][i, j] = self.w_shared
        return dict(input_ids=ids, labels=lab, attention_mask=att, turns=self.turns,
                    ds_rows=torch.tensor([d[0] for d in self.ds], dtype=torch.long),
                    ds_cols=torch.tensor([d[1] for d in self.ds], dtype=torch.long),
                    ds_tgt=torch.tensor([d[2] for d in self.ds], dtype=torch.long),
                    at_rows=torch.tensor([a[0] for a in self.att], dtype=torch.long),
                    at_cols=torch.tensor([a[1] for a in self.att], dtype=torch.long), at_mask=tmask,
                    at_heads=torch.tensor([a[3] for a in self.att], dtype=torch.long),
                    at_layers=torch.tensor([a[4] for a in self.att], dtype=torch.long),
                    cell_rows=torch.tensor([c[0] for c in self.cells], dtype=torch.long),
                    cell_cols=torch.tensor([c[1] for c in self.cells], dtype=torch.long),
                    cell_tgt=torch.tensor([c[2:] for c in self.cells], dtype=torch.long).reshape(-1, 2), **extra)


def _annotate(objs, q: dict) -> dict:
    """Cells the aux losses need: the unique shape's cell (color), objects' cells in reading order (describe)."""
    if q["kind"] == "color":
        q["cell"] = next(o.cell for o in objs if o.shape == q["question"].rstrip("?").split()[-1])
    elif q["kind"] == "describe":
        q["cells"] = sorted(o.cell for o in objs)
    return q


def train_scene(rng, same_color: float = 0.0):
    """A training scene: the spec's (sample_scene), or with probability `same_color` 2-4 objects in one or two
    colours: counts of two to four, rare when each object's colour is one of six, are where count answers failed."""
    if same_color > 0 and rng.random() < same_color:  # no draw when off: runs without it see the batches they saw
        palette = [COLORS[int(i)] for i in rng.choice(6, size=int(rng.integers(1, 3)), replace=False)]
        return sample_scene(rng, int(rng.integers(2, 5)), palette)
    return sample_scene(rng)


def image_batch(rng, voc: Vocab, n_img: int, turns=(1, 5), weights: dict | None = None,
                color_att: bool = False, max_describe: int = 1, resize_aug: float = 0.0,
                same_color: float = 0.0, w_shared: float = 1.0, shared_scope: str = "object") -> dict:
    """n_img scenes, each with a 1-5 turn conversation (kinds drawn by `weights`, default IMAGE_WEIGHTS; at most
    `max_describe` descriptions); with `color_att` each described object's colour word gets an attention target too;
    a share `resize_aug` of the scenes is drawn at another size and resized to 128 px (render_train.resized), a
    share `same_color` has 2-4 objects in one or two colours; `w_shared` weighs the colour word's attention target
    and the shape word of each described object whose colour another object shares (`shared_scope` "scene": of
    every object in a scene where two share a colour, its 'a' and colour word too).
    pixel_values [n_img, 3, 128, 128]."""
    b, pix = Builder(voc, color_att, w_shared, shared_scope), []
    n_tok = arch.IMAGE_SIZE // arch.PATCH
    for _ in range(n_img):
        objs = train_scene(rng, same_color)
        # The draw only when the option is on, so runs without it see the same batches as before it existed.
        pix.append(pixels(resized(objs, rng) if resize_aug > 0 and rng.random() < resize_aug else render(objs, rng)))
        qas = [_annotate(objs, q) for q in sample_image_turns(objs, rng, int(rng.integers(turns[0], turns[1] + 1)),
                                                                    weights, max_describe)]
        b.add([voc.bos] + [voc.img] * n_tok ** 2, [-100] * (1 + n_tok ** 2), qas, [np.arange(1, 1 + n_tok ** 2)],
              lambda f: PCELL)
    out = b.tensors()
    out.update(pixel_values=torch.from_numpy(np.stack(pix)), sides=[n_tok] * n_img, frames=[1] * n_img)
    return out


def render_clip(clip, rng, frames: int) -> list[np.ndarray]:
    """frames images of the clip at t = f / (frames - 1), one style (background, colours) for the whole clip."""
    seed = int(rng.integers(2**31))
    ts = np.linspace(0.0, 1.0, frames)
    return [render(clip.at(float(t)), np.random.default_rng(seed)) for t in ts]


def video_batch(rng, voc: Vocab, n_clips: int, p_full: float = 0.4, frames=(4, 16), qa=(1, 3),
                side: int | None = None, kinds: dict | None = None, p_still: float = 0.15,
                p_mover: float = 0.9) -> dict:
    """n_clips clips; each clip's frames pooled to side x side (8 = full) tokens. pixel_values [sum T, 3, 128, 128].

    Training asks about the mover more often and has fewer still clips (p_still, p_mover) than the held-out sets
    (0.2, 0.75): with "still" at ~40% of direction answers the decoder settled on answering it always."""
    b, pix, sides, counts = Builder(voc), [], [], []
    for _ in range(n_clips):
        clip = sample_clip(rng, p_still=p_still)
        s = side or (8 if rng.random() < p_full else int(rng.integers(2, 9)))
        hi = min(frames[1], 12) if s == 8 else frames[1]  # full-token clips stay <= 12 frames (cost)
        t = int(rng.integers(frames[0], max(frames[0], hi) + 1))
        pix += [pixels(im) for im in render_clip(clip, rng, t)]
        sides.append(s)
        counts.append(t)
        qas = sample_video_questions(clip, rng, int(rng.integers(qa[0], qa[1] + 1)), kinds or VIDEO_WEIGHTS,
                                     p_mover=p_mover)
        for q in qas:
            if q["kind"] == "direction":
                q["cells"] = (clip.objs[q["obj"]].cell, clip.end_cell(q["obj"]))
        slots = [1 + f * s * s + np.arange(s * s) for f in range(t)]
        cells = cell_of_tokens(s)
        b.add([voc.bos] + [voc.img] * (t * s * s), [-100] * (1 + t * s * s), qas, slots, lambda f, c=cells: c)
    out = b.tensors()
    out.update(pixel_values=torch.from_numpy(np.stack(pix)), sides=sides, frames=counts)
    return out


__all__ = ["image_batch", "video_batch", "IMAGE_KINDS", "VIDEO_KINDS"]

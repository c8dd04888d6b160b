"""Train the built-in tiny LLaVA on the synthetic shapes task (CPU, one thread by default).

    python -m backends.tiny.train --out assets/tiny-llava-shapes --seed 0 --steps 4500

The model is a stock `LlavaForConditionalGeneration` (see `arch.py`), trained from scratch on scenes drawn by
`render_train` with questions from `scenes`. Training-only helpers (never saved, not needed at inference):
  * vision aux heads on the CLIP tower's last hidden states (what the projector sees): per patch, the object in
    the patch's grid cell (19-way) and the cell index (9-way); on the CLS token, cell occupancy, the total count and
    the per-colour counts (so the CLS token carries a trained summary of the scene);
  * a "content-token" aux: a linear head on the decoder's hidden state after layer `--ds-layer`, at the question's
    last content word (the position phrase, the shape word, ...), predicts the answer. It gives the first hop of
    the lookup (question word -> image tokens of its cell) a direct gradient.

The run is deterministic given --seed and --threads. It writes a standard Hugging Face folder (fp16
safetensors + processor) to --out, refreshed with the best held-out checkpoint at every evaluation, and a
`training.json` with the command, seeds, versions, accuracy curve and minutes.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import arch
from .render_train import render
from .scenes import KINDS, make_question, sample_questions, sample_scene

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
GRID = arch.IMAGE_SIZE // arch.PATCH  # 8
N_IMG = GRID * GRID  # 64
# Grid cell (0..8) that contains each patch centre (row-major patches).
PCELL = np.array([int((r + 0.5) * 3 / GRID) * 3 + int((c + 0.5) * 3 / GRID)
                  for r in range(GRID) for c in range(GRID)])
DEFAULT_WEIGHTS = {"color": 0.2, "shape_at": 0.45, "count": 0.15, "total": 0.1, "exists": 0.2}


def pixels(img: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) at 128 px -> CLIP-normalised (3, H, W) float32, identical to the processor's output."""
    return ((img.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)


class Vocab:
    """Token ids of the prompt pieces, taken from the real tokenizer (cached per question)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id
        self.img = tokenizer.convert_tokens_to_ids("<image>")
        self.cue = tokenizer("answer :", add_special_tokens=False)["input_ids"]
        self.qmark = tokenizer.convert_tokens_to_ids("?")
        self._q: dict[str, list[int]] = {}

    def q(self, text: str) -> list[int]:
        if text not in self._q:
            self._q[text] = self.tok(text, add_special_tokens=False)["input_ids"]
        return self._q[text]

    def a(self, word: str) -> int:
        return self.tok.convert_tokens_to_ids(word)

    def position_cell(self, question: str) -> int:
        return next(i for i, p in enumerate(arch.POSITIONS) if question.rstrip("?").endswith(" " + p))


def scene_targets(objs) -> dict:
    obj_cell = np.zeros(9, dtype=np.int64)  # 0 = empty, else 1 + shape * 6 + colour
    occ = np.zeros(9, dtype=np.float32)
    ccount = np.zeros(6, dtype=np.int64)
    for o in objs:
        obj_cell[o.cell] = 1 + arch.SHAPES.index(o.shape) * 6 + arch.COLORS.index(o.color)
        occ[o.cell] = 1.0
        ccount[arch.COLORS.index(o.color)] += 1
    return dict(patch=obj_cell[PCELL], occ=occ, total=len(objs), ccount=ccount)


def make_batch(rng, voc: Vocab, n_img: int, qa_per_img: int, weights, one_object: bool = False):
    """`n_img` scenes, each followed by `qa_per_img` packed question/answer pairs:
    <s> <image>x64 q1 answer : a1 </s> q2 answer : a2 </s> ...  (loss on the answers and </s> only)."""
    seqs, labels, ds_pos, ds_tgt, pix, tg = [], [], [], [], [], []
    at_rows, at_cols, at_cells = [], [], []
    for _ in range(n_img):
        objs = sample_scene(rng, n_objects=1 if one_object else None)
        pix.append(pixels(render(objs, rng)))
        tg.append(scene_targets(objs))
        ids = [voc.bos] + [voc.img] * N_IMG
        lab = [-100] * len(ids)
        dpos, dtgt = [], []
        for q in sample_questions(objs, rng, qa_per_img, weights):
            qi = voc.q(q["question"])
            if q["kind"] in ("color", "shape_at", "exists"):
                dpos.append(len(ids) + len(qi) - 2)  # the token before '?': position phrase / shape word
                dtgt.append(voc.a(q["answer"]))
            if q["kind"] in ("shape_at", "color"):  # one target cell: the asked position / the unique shape's cell
                cell = (voc.position_cell(q["question"]) if q["kind"] == "shape_at"
                        else next(o.cell for o in objs if o.shape == q["question"].split()[-1].rstrip("?")))
                at_rows.append(len(seqs))
                at_cols.append(len(ids) + len(qi) - 2)
                at_cells.append(cell)
            ids += qi + voc.cue
            lab += [-100] * (len(qi) + len(voc.cue))
            ids += [voc.a(q["answer"]), voc.eos]
            lab += [voc.a(q["answer"]), voc.eos]
        seqs.append(ids)
        labels.append(lab)
        ds_pos.append(dpos)
        ds_tgt.append(dtgt)
    L = max(len(s) for s in seqs)
    B = len(seqs)
    input_ids = torch.full((B, L), voc.pad, dtype=torch.long)
    lab_t = torch.full((B, L), -100, dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.long)
    for i, (s, lb) in enumerate(zip(seqs, labels)):
        input_ids[i, : len(s)] = torch.tensor(s)
        lab_t[i, : len(lb)] = torch.tensor(lb)
        att[i, : len(s)] = 1
    rows = [i for i, p in enumerate(ds_pos) for _ in p]
    cols = [c for p in ds_pos for c in p]
    tg_all = [t for ts in ds_tgt for t in ts]
    return dict(
        input_ids=input_ids, labels=lab_t, attention_mask=att,
        pixel_values=torch.from_numpy(np.stack(pix)),
        patch=torch.from_numpy(np.stack([t["patch"] for t in tg])),
        occ=torch.from_numpy(np.stack([t["occ"] for t in tg])),
        total=torch.tensor([t["total"] for t in tg]),
        ccount=torch.from_numpy(np.stack([t["ccount"] for t in tg])),
        ds_rows=torch.tensor(rows, dtype=torch.long), ds_cols=torch.tensor(cols, dtype=torch.long),
        ds_tgt=torch.tensor(tg_all, dtype=torch.long),
        at_rows=torch.tensor(at_rows, dtype=torch.long), at_cols=torch.tensor(at_cols, dtype=torch.long),
        at_cells=torch.tensor(at_cells, dtype=torch.long),
    )


class AuxHeads(torch.nn.Module):
    """Training-only heads (not saved)."""

    def __init__(self, vis_width: int, lm_width: int, vocab: int):
        super().__init__()
        self.obj = torch.nn.Linear(vis_width, 19)
        self.cell = torch.nn.Linear(vis_width, 9)
        self.cls = torch.nn.Linear(vis_width, 9 + 5 + 6 * 5)
        self.ds = torch.nn.Linear(lm_width, vocab)


def forward(model, batch, ds_layer: int | None = None, need_vision: bool = True):
    """LLaVA forward split into its parts (identical to `model(...)`), returning the pieces the losses need."""
    vo = model.model.vision_tower(batch["pixel_values"], output_hidden_states=True)
    hs = vo.hidden_states[-1]  # == hidden_states[vision_feature_layer=-1]
    feats = model.model.multi_modal_projector(hs[:, 1:])
    emb = model.model.language_model.get_input_embeddings()(batch["input_ids"])
    mask = (batch["input_ids"] == model.config.image_token_id).unsqueeze(-1)
    emb = emb.masked_scatter(mask, feats.reshape(-1, feats.shape[-1]).to(emb.dtype))
    out = model.model.language_model(inputs_embeds=emb, attention_mask=batch["attention_mask"],
                                      output_hidden_states=ds_layer is not None)
    logits = model.lm_head(out.last_hidden_state)
    mid = out.hidden_states[ds_layer] if ds_layer is not None else None
    forward.last_emb = emb
    return hs, logits, mid


def attention_loss(model, emb, batch, layer: int = 0, head: int = 0):
    """-log(attention mass on the target cell's image tokens) of one head of decoder `layer` at the question's
    content token (position phrase / shape word). Recomputes just those attention rows from the layer's input."""
    from transformers.models.llama.modeling_llama import rotate_half

    lm = model.model.language_model
    rows, cols, cells = batch["at_rows"], batch["at_cols"], batch["at_cells"]
    attn = lm.layers[layer].self_attn
    d = attn.head_dim
    x = lm.layers[layer].input_layernorm(emb)  # layer input (emb = hidden state entering `layer`)
    L = x.shape[1]
    cos, sin = lm.rotary_emb(x, position_ids=torch.arange(L).unsqueeze(0))  # (1, L, d)
    cos, sin = cos[0], sin[0]
    kv_head = head // (attn.config.num_attention_heads // attn.config.num_key_value_heads)
    # index_select, not x[rows], as losses_v2 does: rows repeat, and x[rows]'s backward (an accumulating index_put)
    # adds them in a racing order on more than one thread
    k = attn.k_proj(x.index_select(0, rows)).view(len(rows), L, -1, d)[:, :, kv_head]  # (N, L, d)
    k = k * cos + rotate_half(k) * sin
    q = attn.q_proj(x[rows, cols]).view(len(rows), -1, d)[:, head]  # (N, d)
    q = q * cos[cols] + rotate_half(q) * sin[cols]
    sc = torch.einsum("nd,nld->nl", q, k) * attn.scaling
    sc = sc.masked_fill(torch.arange(L).unsqueeze(0) > cols.unsqueeze(1), float("-inf"))
    p = sc.softmax(-1)[:, 1:1 + N_IMG]  # image tokens sit at positions 1..64
    tgt = (torch.as_tensor(PCELL).unsqueeze(0) == cells.unsqueeze(1)).float()
    return -torch.log((p * tgt).sum(-1) + 1e-6).mean()


def smooth(ema: dict, parts: dict, decay: float = 0.98) -> None:
    """Exponential moving average of each loss part, in place (the progress line shows these, not one batch's)."""
    for k, v in parts.items():
        ema[k] = v if k not in ema else decay * ema[k] + (1 - decay) * v


def add_parts(parts: dict, got: dict, name: str, w: float) -> None:
    """Accumulate one sub-batch's loss parts, weighted as its loss was, under `<part>_<sub-batch name>`."""
    for k, v in got.items():
        parts[f"{k}_{name}"] = parts.get(f"{k}_{name}", 0.0) + w * v


def lm_loss(logits, labels):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def vision_loss(heads: AuxHeads, hs, batch):
    p = hs[:, 1:]
    B = p.shape[0]
    l_patch = F.cross_entropy(heads.obj(p).flatten(0, 1), batch["patch"].flatten()) + F.cross_entropy(
        heads.cell(p).flatten(0, 1), torch.as_tensor(PCELL).repeat(B))
    c = heads.cls(hs[:, 0])
    l_cls = (F.binary_cross_entropy_with_logits(c[:, :9], batch["occ"]) + F.cross_entropy(c[:, 9:14], batch["total"])
             + F.cross_entropy(c[:, 14:].reshape(-1, 5), batch["ccount"].flatten()))
    return l_patch, l_cls


# ---------------------------------------------------------------------------------------------- evaluation

def make_eval_set(seed: int, per_kind: int, voc: Vocab):
    """Held-out check set from the training renderer: one scene per question, single-QA prompts as at inference."""
    rng = np.random.default_rng(seed)
    items = []
    for kind in KINDS:
        n = 0
        while n < per_kind:
            objs = sample_scene(rng)
            q = make_question(objs, kind, rng)
            if q is None:  # 'color' needs a unique shape
                continue
            items.append(dict(pix=pixels(render(objs, rng)), ids=[voc.bos] + [voc.img] * N_IMG + voc.q(q["question"])
                              + voc.cue, answer=voc.a(q["answer"]), kind=kind))
            n += 1
    return items


@torch.no_grad()
def evaluate(model, items, voc: Vocab, bs: int = 100, shuffle: bool = False) -> dict:
    """Teacher-forced argmax of the first answer token (== greedy generate's first word)."""
    model.eval()
    pix_all = np.stack([it["pix"] for it in items])
    if shuffle:
        pix_all = pix_all[np.random.default_rng(0).permutation(len(items))]
    correct = {k: [] for k in KINDS}
    for s in range(0, len(items), bs):
        chunk = items[s:s + bs]
        L = max(len(it["ids"]) for it in chunk)
        ids = torch.full((len(chunk), L), voc.pad, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, it in enumerate(chunk):
            ids[i, : len(it["ids"])] = torch.tensor(it["ids"])
            att[i, : len(it["ids"])] = 1
        b = dict(input_ids=ids, attention_mask=att, pixel_values=torch.from_numpy(pix_all[s:s + bs]))
        _, logits, _ = forward(model, b)
        last = att.sum(1) - 1
        pred = logits[torch.arange(len(chunk)), last].argmax(-1)
        for i, it in enumerate(chunk):
            correct[it["kind"]].append(int(pred[i]) == it["answer"])
    model.train()
    res = {k: 100.0 * float(np.mean(v)) for k, v in correct.items()}
    res["overall"] = float(np.mean([res[k] for k in KINDS]))
    return res


def progress_log(path: str | None):
    """A logger for training runs: each line above the progress bar, and appended to `path` when given."""
    from tqdm import tqdm

    logf = open(path, "a") if path else None

    def log(msg: str):
        tqdm.write(msg)
        if logf:
            logf.write(msg + "\n")
            logf.flush()

    return log


def save_model(model, processor, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).to(torch.float16)
    m.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


# ---------------------------------------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m backends.tiny.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="assets/tiny-llava-shapes", help="output folder (Hugging Face format)")
    p.add_argument("--seed", type=int, default=0,
                   help="init seed; aux heads seed+1, data seed+1000, check-set seed+999")
    p.add_argument("--steps", type=int, default=4500, help="full-model steps")
    p.add_argument("--vision-steps", type=int, default=150, help="vision-only pre-steps (aux losses only)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (results are reproducible per count)")
    p.add_argument("--batch", type=int, default=16, help="images per step")
    p.add_argument("--qa", type=int, default=6, help="question/answer pairs packed after each image")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--min-lr-frac", type=float, default=0.05, help="cosine floor as a fraction of --lr")
    p.add_argument("--w-shape-at", type=float, default=DEFAULT_WEIGHTS["shape_at"], help="sampling weight of shape_at")
    p.add_argument("--w-ds", type=float, default=0.5, help="weight of the content-token answer aux (0 = off)")
    p.add_argument("--ds-layer", type=int, default=2, help="decoder layer whose output the content-token aux reads")
    p.add_argument("--w-att", type=float, default=0.3,
                   help="weight of the attention aux (decoder layer 0, head 0, content token -> target cell)")
    p.add_argument("--att-steps", type=int, default=10**9, help="apply the attention aux only for the first N steps")
    p.add_argument("--curriculum", type=int, default=0, help="steps of one-object scenes at the start")
    p.add_argument("--rope-theta", type=float, default=None, help="override the decoder's rope_theta")
    p.add_argument("--heads", type=int, default=None, help="override the decoder's attention heads")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-per-kind", type=int, default=100)
    p.add_argument("--log", default=None, help="also append the progress lines to this file")
    p.add_argument("--no-save", action="store_true", help="probe mode: evaluate only, write nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import transformers
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    t0 = time.time()
    out = Path(args.out)
    log = progress_log(args.log)

    processor = arch.build_processor()
    tokenizer = processor.tokenizer
    voc = Vocab(tokenizer)
    overrides = {}
    if args.rope_theta:
        overrides["rope_parameters"] = {"rope_type": "default", "rope_theta": args.rope_theta}
    if args.heads:
        overrides.update(num_attention_heads=args.heads, num_key_value_heads=args.heads)
    model = arch.build_model(tokenizer, seed=args.seed, vocab_size=arch.V1_VOCAB_SIZE, **overrides)
    model.train()
    torch.manual_seed(args.seed + 1)
    heads = AuxHeads(128, model.config.text_config.hidden_size, model.config.text_config.vocab_size)
    params = list(model.parameters()) + list(heads.parameters())
    rng = np.random.default_rng(args.seed + 1000)
    weights = dict(DEFAULT_WEIGHTS, shape_at=args.w_shape_at)
    check = make_eval_set(args.seed + 999, args.eval_per_kind, voc)
    log(f"# {' '.join(['python -m backends.tiny.train'] + (sys.argv[1:] if argv is None else list(argv)))}")
    log(f"# params {sum(p.numel() for p in model.parameters()):,}  threads {args.threads}")

    # Stage 0: vision tower + aux heads only.
    opt0 = torch.optim.AdamW(list(model.model.vision_tower.parameters()) + list(heads.parameters()), lr=args.lr,
                             betas=(0.9, 0.98), weight_decay=0.01)
    for step in tqdm(range(args.vision_steps), desc="vision", mininterval=5, disable=None):
        lr = args.lr * min(1.0, (step + 1) / 50)
        for g in opt0.param_groups:
            g["lr"] = lr
        objs_pix, tg = [], []
        for _ in range(64):
            objs = sample_scene(rng)
            objs_pix.append(pixels(render(objs, rng)))
            tg.append(scene_targets(objs))
        b = dict(pixel_values=torch.from_numpy(np.stack(objs_pix)),
                 patch=torch.from_numpy(np.stack([t["patch"] for t in tg])),
                 occ=torch.from_numpy(np.stack([t["occ"] for t in tg])), total=torch.tensor([t["total"] for t in tg]),
                 ccount=torch.from_numpy(np.stack([t["ccount"] for t in tg])))
        hs = model.model.vision_tower(b["pixel_values"], output_hidden_states=True).hidden_states[-1]
        lp, lc = vision_loss(heads, hs, b)
        loss = lp + 0.5 * lc
        opt0.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt0.step()
    if args.vision_steps:
        log(f"vision pre-stage done: patch {lp.item():.3f} cls {lc.item():.3f}  ({(time.time() - t0) / 60:.1f} min)")

    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    curve, best, ema = [], None, {}
    bar = tqdm(range(1, args.steps + 1), desc="train", mininterval=5, disable=None)
    for step in bar:
        if step <= args.warmup:
            lr = args.lr * step / args.warmup
        else:
            t = (step - args.warmup) / max(1, args.steps - args.warmup)
            lr = args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))
        for g in opt.param_groups:
            g["lr"] = lr
        b = make_batch(rng, voc, args.batch, args.qa, weights, one_object=step <= args.curriculum)
        use_ds = args.w_ds > 0 and len(b["ds_rows"]) > 0
        hs, logits, mid = forward(model, b, ds_layer=args.ds_layer if use_ds else None)
        l_lm = lm_loss(logits, b["labels"])
        lp, lc = vision_loss(heads, hs, b)
        loss = l_lm + lp + 0.5 * lc
        parts = dict(lm=l_lm.item(), patch=lp.item(), cls=lc.item())
        if use_ds:
            l_ds = F.cross_entropy(heads.ds(mid[b["ds_rows"], b["ds_cols"]]), b["ds_tgt"])
            loss = loss + args.w_ds * l_ds
            parts["ds"] = l_ds.item()
        if args.w_att > 0 and len(b["at_rows"]) > 0 and step <= args.att_steps:
            l_att = attention_loss(model, forward.last_emb, b, layer=0, head=0)
            loss = loss + args.w_att * l_att
            parts["att"] = l_att.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        smooth(ema, parts)
        if step % 25 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in ema.items()})
        if step % args.eval_every == 0 or step == args.steps:
            acc = evaluate(model, check, voc)
            minutes = (time.time() - t0) / 60
            curve.append(dict(step=step, minutes=round(minutes, 2), **{k: round(v, 1) for k, v in acc.items()},
                              **{f"loss_{k}": round(v, 4) for k, v in ema.items()}))
            log(f"step {step:5d} {minutes:6.1f} min  overall {acc['overall']:5.1f}  "
                + "  ".join(f"{k} {acc[k]:5.1f}" for k in KINDS) + "  |  "
                + " ".join(f"{k} {v:.3f}" for k, v in ema.items()))
            score = (min(acc[k] for k in KINDS), acc["overall"])
            if best is None or score >= best[0]:
                best = (score, step, acc)
                if not args.no_save:
                    save_model(model, processor, out)
                    log(f"  saved checkpoint (step {step}) -> {out}")
    minutes = (time.time() - t0) / 60
    info = dict(
        command="python -m backends.tiny.train " + " ".join(sys.argv[1:] if argv is None else list(argv)),
        args=vars(args), seeds=dict(init=args.seed, aux_heads=args.seed + 1, train_data=args.seed + 1000,
                                    check_set=args.seed + 999),
        steps=args.steps, best_step=best[1] if best else None, check_accuracy_best=best[2] if best else None,
        curve=curve, minutes=round(minutes, 1),
        versions=dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
                      numpy=np.__version__),
        params=sum(p.numel() for p in model.parameters()),
    )
    if not args.no_save and out.exists():
        (out / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"# done in {minutes:.1f} min; best step {info['best_step']}")
    return info


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

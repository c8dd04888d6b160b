"""Train the two-encoder built-in model (builtin-2enc) from a one-encoder built-in folder (v1 or v2).

    nohup python -m backends.tiny.train_2enc --init assets/tiny-llava-shapes --out assets/tiny-llava-shapes-2enc \
        --log /tmp/train_2enc.log > /tmp/train_2enc.out 2>&1 &
    python -m backends.tiny.train_2enc --ranks FOLDER     # (re)measure and store the encoders' feature ranks only

The model (backends/tiny/two_encoder.py) holds the base model's CLIP tower, projector and LLM, plus a fresh
ConvNeXt-style encoder and its projector. Frozen: the CLIP tower and its projector (the base trained them; every
token-selection method reads them). Trained: the conv encoder and its projector at --lr, with per-cell auxiliary
losses on its tokens like train.py's per-patch ones (the object in the scene cell under each token's centre, 19-way,
and that cell, 9-way: the heads are training-only); the LLM and its head lightly, at --lr x --lm-lr-frac, with a KL
term to the frozen base model on the same conversation without the conv tokens (so the base's answers survive
while the LLM learns to read the new tokens). Data: v2's batches (image conversations of 1-5 turns over the five v1
kinds and descriptions; full-frame video clips), each frame's 64 placeholders followed by the conv encoder's 36.

At every evaluation (teacher-forced exact answers on a fixed check set, per kind, next to the base model's on the
same items) the best model by its worst kind relative to the base is saved to --out (fp16, processor with 100
placeholders per image, the encoders' feature ranks measured on 20 generated calibration scenes), and a resume
checkpoint to <out>.ckpt.pt. At the end: ShortV's calibration for the new folder and training_2enc.json.
One torch thread by default; deterministic for a seed and thread count.
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

from . import two_encoder as te
from .arch import VOCAB_SIZE
from .batches import Builder, _annotate, cell_of_tokens, sample_image_turns, video_batch
from .losses_v2 import forward as base_forward
from .losses_v2 import grow
from .render_train import render
from .scenes import sample_scene
from .train import PCELL, Vocab, add_parts, lm_loss, pixels, smooth
from .train_v2 import make_check

N_CLIP, SIDE = 64, 6
N_CONV = SIDE * SIDE
CONV_CELL = torch.as_tensor(cell_of_tokens(SIDE))  # scene cell (0..8) under each conv token's centre


def obj_cells(objs) -> np.ndarray:
    """Per scene cell: 0 = empty, else 1 + shape * 6 + colour (train.py's per-patch target, per cell)."""
    from .arch import COLORS, SHAPES

    out = np.zeros(9, dtype=np.int64)
    for o in objs:
        out[o.cell] = 1 + SHAPES.index(o.shape) * 6 + COLORS.index(o.color)
    return out


def image_batch(rng, voc: Vocab, n_img: int, max_describe: int = 1) -> dict:
    """batches.image_batch's conversations (at most `max_describe` descriptions each), also returning each scene's
    per-cell objects (`cells` [n_img, 9])."""
    b, pix, cells = Builder(voc), [], []
    for _ in range(n_img):
        objs = sample_scene(rng)
        pix.append(pixels(render(objs, rng)))
        cells.append(obj_cells(objs))
        qas = [_annotate(objs, q) for q in sample_image_turns(objs, rng, int(rng.integers(1, 6)),
                                                                      max_describe=max_describe)]
        b.add([voc.bos] + [voc.img] * N_CLIP, [-100] * (1 + N_CLIP), qas, [np.arange(1, 1 + N_CLIP)], lambda f: PCELL)
    out = b.tensors()
    out.update(pixel_values=torch.from_numpy(np.stack(pix)), sides=[8] * n_img, frames=[1] * n_img,
               cells=torch.from_numpy(np.stack(cells)))
    return out


def widen(b: dict, img: int, pad: int) -> dict:
    """A one-encoder batch (each frame's 64 placeholders in one run per sequence) rewritten for the two-encoder
    model: every frame's 64 followed by 36 more. Adds `shift` [B] (how far each sequence's text moved) and moves
    the answer spans in `turns`; ids, labels and mask are re-padded."""
    rows, shifts = [], []
    for ids, lab in zip(b["input_ids"], b["labels"]):
        at = (ids == img).nonzero().flatten()
        s, n = int(at[0]), len(at)
        frames = n // N_CLIP
        shifts.append(frames * N_CONV)
        keep = int((ids != pad).sum()) if pad != img else len(ids)
        rows.append((torch.cat([ids[:s], torch.full((frames * (N_CLIP + N_CONV),), img), ids[s + n:keep]]),
                     torch.cat([lab[:s], torch.full((frames * (N_CLIP + N_CONV),), -100), lab[s + n:keep]])))
    L = max(len(r[0]) for r in rows)
    out = dict(b)
    out["input_ids"] = torch.full((len(rows), L), pad, dtype=torch.long)
    out["labels"] = torch.full((len(rows), L), -100, dtype=torch.long)
    out["attention_mask"] = torch.zeros((len(rows), L), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        out["input_ids"][i, :len(ids)], out["labels"][i, :len(lab)], out["attention_mask"][i, :len(ids)] = ids, lab, 1
    out["turns"] = [[(a + sh, e + sh, k) for a, e, k in spans] for spans, sh in zip(b["turns"], shifts)]
    out["shift"] = torch.tensor(shifts)
    return out


def forward(model, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-encoder forward on a widened batch: (logits [B, L, vocab], conv tokens before the projector [F, 36, Dv])."""
    m = model.model
    pv = b["pixel_values"]
    with torch.no_grad():  # frozen CLIP tower and projector
        clip = m.multi_modal_projector(m.vision_tower(pv, output_hidden_states=True).hidden_states[-1][:, 1:])
    conv_tok = m.conv_features(pv)
    feats = torch.cat([clip, m.conv_projector(conv_tok)], 1)  # per frame: CLIP's 64, then the conv encoder's 36
    emb = m.language_model.get_input_embeddings()(b["input_ids"])
    mask = (b["input_ids"] == model.config.image_token_id).unsqueeze(-1)
    emb = emb.masked_scatter(mask, feats.reshape(-1, feats.shape[-1]).to(emb.dtype))
    out = m.language_model(inputs_embeds=emb, attention_mask=b["attention_mask"])
    return model.lm_head(out.last_hidden_state), conv_tok


def kl_to_base(logits: torch.Tensor, base_logits: torch.Tensor, wide: dict, narrow: dict) -> torch.Tensor:
    """KL(base || student) of the next-token distributions at every answer position (labels set), matched across
    the two layouts by the per-sequence shift."""
    rows, cols = (narrow["labels"][:, 1:] != -100).nonzero(as_tuple=True)
    student = logits[rows, cols + wide["shift"][rows]].float().log_softmax(-1)
    teacher = base_logits[rows, cols].float().log_softmax(-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


@torch.no_grad()
def evaluate(model, check: list[dict]) -> dict:
    """Teacher-forced: a turn is right when every answer token and </s> is the argmax (= greedy's output)."""
    model.eval()
    hits: dict[str, list[bool]] = {}
    for b in check:
        pred = forward(model, b)[0].argmax(-1)
        for i, spans in enumerate(b["turns"]):
            for a, e, kind in spans:
                hits.setdefault(kind, []).append(bool((pred[i, a - 1:e - 1] == b["input_ids"][i, a:e]).all()))
    model.train()
    return {k: round(100.0 * float(np.mean(v)), 1) for k, v in sorted(hits.items())}


@torch.no_grad()
def evaluate_base(base, check: list[dict]) -> dict:
    hits: dict[str, list[bool]] = {}
    for b in check:
        pred = base_forward(base, b, None)[1].argmax(-1)
        for i, spans in enumerate(b["turns"]):
            for a, e, kind in spans:
                hits.setdefault(kind, []).append(bool((pred[i, a - 1:e - 1] == b["input_ids"][i, a:e]).all()))
    return {k: round(100.0 * float(np.mean(v)), 1) for k, v in sorted(hits.items())}


def store_ranks(model, processor, n: int = 20) -> list[float]:
    """Measure each encoder's feature rank on n generated calibration scenes and keep it in the config."""
    from backends.calibrate import CALIBRATION_SEED, _generated

    images = [im for im, _ in _generated(n)]
    pv = processor.image_processor(images, return_tensors="pt")["pixel_values"].to(model.dtype)
    model.config.encoder_ranks = te.measure_ranks(model, pv)
    model.config.rank_note = (f"mean numerical rank (singular values > {te.RANK_TOL:g} x the largest) of each "
                              f"encoder's tokens before its projector, over {n} generated scenes "
                              f"(seed {CALIBRATION_SEED})")
    return model.config.encoder_ranks


def save(model, processor, out: Path) -> list[float]:
    out.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).eval()
    ranks = store_ranks(m, processor)
    # The conv encoder and the LLM's fine-tuning saw full frames only: the base's claim to Dynamic-VLM's recipe
    # (trained for variable per-frame token counts) does not carry over.
    m.config.dynamic_vlm_trained = False
    m.to(torch.float16).save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return ranks


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m backends.tiny.train_2enc", description=__doc__.split("\n")[0])
    p.add_argument("--init", default="assets/tiny-llava-shapes", help="one-encoder built-in folder to start from")
    p.add_argument("--out", default="assets/tiny-llava-shapes-2enc")
    p.add_argument("--ranks", default=None, metavar="FOLDER", help="only measure and store FOLDER's encoder ranks")
    p.add_argument("--resume", action="store_true", help="continue from <out>.ckpt.pt")
    p.add_argument("--seed", type=int, default=0, help="conv encoder/heads seed+3; data seed+3000; check seed+2999")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=8, help="image conversations per step")
    p.add_argument("--clips", type=int, default=2, help="full-frame video clips per step (4-8 frames each)")
    p.add_argument("--lr", type=float, default=1e-3, help="conv encoder, its projector and the aux heads")
    p.add_argument("--lm-lr-frac", type=float, default=0.2,
                   help="the LLM trains at lr x this (0: frozen; 0.05 left descriptions 12 points under the base)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--w-aux", type=float, default=1.0, help="per-cell aux losses on the conv tokens")
    p.add_argument("--w-kl", type=float, default=1.0, help="KL to the base model's answers")
    p.add_argument("--max-describe", type=int, default=1,
                   help="descriptions per conversation (worded differently): a user may ask twice")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--check-images", type=int, default=200, help="check-set image conversations (multiple of 25)")
    p.add_argument("--check-clips", type=int, default=40, help="check-set clips (multiple of 10)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (after saving) past this many minutes")
    p.add_argument("--log", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(args.threads)
    if args.ranks:
        model = AutoModelForImageTextToText.from_pretrained(args.ranks, dtype=torch.float32).eval()
        ranks = store_ranks(model, AutoProcessor.from_pretrained(args.ranks))
        model.config.save_pretrained(args.ranks)
        print(f"{args.ranks}: encoder ranks {ranks}")
        return None
    t0, out = time.time(), Path(args.out)
    ckpt = Path(str(out).rstrip("/") + ".ckpt.pt")
    logf = open(args.log, "a") if args.log else None

    def log(msg: str):
        print(msg, flush=True)
        if logf:
            logf.write(msg + "\n")
            logf.flush()

    base = AutoModelForImageTextToText.from_pretrained(args.init, dtype=torch.float32).eval()
    if base.config.text_config.vocab_size < VOCAB_SIZE:  # a v1 folder: v2's words get new rows (as train_v2 does)
        grow(base, VOCAB_SIZE, args.seed + 2)
    for p in base.parameters():
        p.requires_grad_(False)
    model = te.from_base(base, seed=args.seed + 3).train()
    processor = te.two_encoder_processor(AutoProcessor.from_pretrained(args.init), model.config)
    voc = Vocab(processor.tokenizer)
    img, pad = voc.img, voc.pad
    m = model.model
    for p in list(m.vision_tower.parameters()) + list(m.multi_modal_projector.parameters()):
        p.requires_grad_(False)
    torch.manual_seed(args.seed + 3)
    heads = torch.nn.ModuleDict({"obj": torch.nn.Linear(128, 19), "cell": torch.nn.Linear(128, 9)})
    new = list(m.conv_tower.parameters()) + list(m.conv_projector.parameters()) + list(heads.parameters())
    lm = list(m.language_model.parameters()) + list(model.lm_head.parameters())
    groups = [{"params": new, "scale": 1.0}] + ([{"params": lm, "scale": args.lm_lr_frac}] if args.lm_lr_frac else [])
    if not args.lm_lr_frac:
        for p in lm:
            p.requires_grad_(False)
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng = np.random.default_rng(args.seed + 3000)
    start, curve, best, ema = 1, [], None, {}
    if args.resume and ckpt.exists():
        st = torch.load(ckpt, weights_only=False)  # our own file, written below
        model.load_state_dict(st["model"])
        heads.load_state_dict(st["heads"])
        opt.load_state_dict(st["opt"])
        rng.bit_generator.state = st["rng"]
        start, curve, best, ema = st["step"] + 1, st["curve"], st["best"], st["ema"]
        t0 -= st["minutes"] * 60
        log(f"# resumed at step {start} from {ckpt}")
    imgs, vids = make_check(args.seed + 2999, voc, args.check_images, args.check_clips)
    narrow_check = imgs + [b for side, b in vids if side == 8]  # full frames only: both encoders see every frame
    check = [widen(b, img, pad) for b in narrow_check]
    ref = evaluate_base(base, narrow_check)
    log(f"# python -m backends.tiny.train_2enc {' '.join(argv)}")
    log("# base model on the check set: " + " ".join(f"{k} {v:.1f}" for k, v in ref.items()))
    trainable = [p for g in groups for p in g["params"] if p.requires_grad]
    step = start - 1
    for step in range(start, args.steps + 1):
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        lr = args.lr * (step / args.warmup if step <= args.warmup else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"]
        opt.zero_grad(set_to_none=True)
        parts: dict[str, float] = {}
        work = [("img", image_batch(rng, voc, args.images, args.max_describe), 1.0)]
        work += [("vid", video_batch(rng, voc, 1, side=8, frames=(4, 8)), 1.0 / max(1, args.clips))
                 for _ in range(args.clips)]
        for name, nb, w in work:
            b = widen(nb, img, pad)
            logits, conv_tok = forward(model, b)
            loss = lm_loss(logits, b["labels"])
            got = {"lm": loss.item()}
            if args.w_kl > 0:
                with torch.no_grad():
                    base_logits = base_forward(base, nb, None)[1]
                l_kl = kl_to_base(logits, base_logits, b, nb)
                loss = loss + args.w_kl * l_kl
                got["kl"] = l_kl.item()
            if args.w_aux > 0 and "cells" in nb:
                cells = CONV_CELL.expand(conv_tok.shape[0], -1)
                target = nb["cells"].gather(1, cells)
                l_aux = (F.cross_entropy(heads["obj"](conv_tok).flatten(0, 1), target.flatten())
                         + F.cross_entropy(heads["cell"](conv_tok).flatten(0, 1), cells.flatten()))
                loss = loss + args.w_aux * l_aux
                got["aux"] = l_aux.item()
            (w * loss).backward()
            add_parts(parts, got, name, w)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        smooth(ema, parts)
        minutes = (time.time() - t0) / 60
        if step % 25 == 0:
            log(f"  step {step}/{args.steps} {minutes:.1f} min  " + " ".join(f"{k} {v:.3f}" for k, v in ema.items()))
        stop = args.max_minutes > 0 and minutes > args.max_minutes
        if step % args.eval_every == 0 or step == args.steps or stop:
            acc = evaluate(model, check)
            gap = {k: round(acc[k] - ref.get(k, 0.0), 1) for k in acc}
            curve.append(dict(step=step, minutes=round(minutes, 1), **acc, **{f"loss_{k}": round(v, 4)
                                                                                for k, v in ema.items()}))
            log(f"step {step:5d} {minutes:6.1f} min  "
                + " ".join(f"{k} {v:.1f} ({gap[k]:+.1f})" for k, v in acc.items()))
            score = (min(gap.values()), float(np.mean(list(acc.values()))))
            if best is None or score >= tuple(best[0]):
                best = (score, step, acc)
                ranks = save(model, processor, out)
                log(f"  saved best (step {step}) -> {out}; encoder ranks {ranks}")
            torch.save(dict(model=model.state_dict(), heads=heads.state_dict(), opt=opt.state_dict(),
                            rng=rng.bit_generator.state, step=step, curve=curve, best=best, ema=ema, minutes=minutes),
                       ckpt)
        if stop:
            log(f"# stopped at --max-minutes {args.max_minutes:g} (step {step}); resume with --resume")
            break
    info = dict(command="python -m backends.tiny.train_2enc " + " ".join(argv), args=vars(args), base=args.init,
                base_check_accuracy=ref, seeds=dict(conv_and_heads=args.seed + 3, train_data=args.seed + 3000,
                                                    check_set=args.seed + 2999),
                best_step=best[1], check_accuracy_best=best[2], curve=curve,
                minutes=round((time.time() - t0) / 60, 1), params=sum(p.numel() for p in model.parameters()),
                versions=dict(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__))
    (out / "training_2enc.json").write_text(json.dumps(info, indent=1) + "\n")
    if step == args.steps:
        calibrate_shortv(out)
    log(f"# done in {info['minutes']} min; best step {best[1]}")
    return info


def calibrate_shortv(folder: Path) -> None:
    """ShortV's layer ranking for the new model, on the same generated scenes as the built-in model's."""
    from backends import calibrate
    from backends.models import load_model
    from backends.settings import Settings

    calibrate.write_calibration(load_model(str(folder), Settings()), calibrate._generated(20), str(folder),
                                f"generated scenes, seed {calibrate.CALIBRATION_SEED}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

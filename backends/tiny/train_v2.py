"""Stages 2-8 of the built-in model (v2): grow v1 into long answers, conversations and video, then refine it.

    python app.py train-tiny --out assets/tiny-llava-shapes [--resume]      # stages 1 (v1, from scratch) to 8
    python -m backends.tiny.train_v2 --init V1_DIR --out DIR [--resume]     # stage 2 from a v1 folder
    python -m backends.tiny.train_v2 --init PREV_DIR --out DIR <STAGE_K>    # stage K = 3..8 (pipeline.LATER[K];
                                                                            # stages 7-8 also --teacher V1_DIR)

Starts from the v1 weights, grows the vocabulary (64 -> 96 rows; v1 ids unchanged, new text rows N(0, 1) like
v1's, new output rows N(0, 0.02)) and keeps the architecture (64 visual tokens per image, CLS, 8 decoder layers).
The vision tower is frozen (v1 trained it with its per-patch auxiliary losses; every token-selection method reads
it); the projector and the decoder train. Each step: an image batch (1-5 turn conversations over the five v1 kinds
and descriptions) and a video batch (frames pooled to a per-clip side x side grid, 2..8, or full 8x8).
Training-only aux losses, as in v1 (heads not saved): content token -> answer at decoder layer 2 (`--w-ds`), and
an attention loss from the content token (and from each described object's opening `a`) onto the image tokens of
the cell it is about (`--w-att`; head 0 in the first frame, head 1 in the last, so a direction question reads where
its object starts and ends from two heads; decoder layer 0 where the token alone poses the query, layer 1 where it
needs the tokens before it: the colour of "the blue square", the previous object of a description). Stage 3 adds a
third (`--w-cell`): the shape word of a direction question names its object's start and end cells. Stages 4-5
reweight the image question mix (`--image-weights`) and put the attention aux on each described object's colour word
too (`--att-color`); stages 6-7 let a conversation ask for the description again (`--max-describe`). Options no
stage before 7 used: `--resize-aug` (images drawn at 80-320 px and resized as uploads are), `--kind-loss` (weight one
kind's answers in the LM loss), `--same-color` (scenes in one or two colours), `--teacher` (a KL to a v1 model's
answers on extra one-turn v1-kind scenes: learning without forgetting what v1 did better), `--tower-lr-frac` (train
the vision tower too; no stage uses it). A checkpoint for `--resume` and the model (to --out) are written at every
evaluation; the result is the last step's model. Deterministic for a seed and thread count (on two threads since
the attention aux gathers with index_select: before, its backward raced). Each step's batches are drawn ahead in a
second process when a core is free (`--feed`, feed.py): the same batches.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import arch
from .batches import IMAGE_KINDS, IMAGE_WEIGHTS, VIDEO_WEIGHTS, image_batch, video_batch
from .feed import Feed, step_batches
from .losses_v2 import forward, grow, losses, teacher_loss
from .scenes import KINDS
from .train import Vocab, add_parts, progress_log, save_model, smooth

# ------------------------------------------------------------------------------------------ check set


def make_check(seed: int, voc: Vocab, n_img: int, n_vid: int):
    """Fixed check batches (training renderer): image conversations of 1-4 turns; 8-frame clips, full and 4x4."""
    rng = np.random.default_rng(seed)
    imgs = [image_batch(rng, voc, 25, turns=(1, 4)) for _ in range(n_img // 25)]
    vids = []
    for side in (8, 4):
        r = np.random.default_rng(seed + 1)  # the same clips at both sides
        vids += [(side, video_batch(r, voc, 10, frames=(8, 8), qa=(1, 1), side=side, p_still=0.2, p_mover=0.75))
                 for _ in range(n_vid // 10)]  # the held-out sets' shares of still clips and mover questions
    return imgs, vids


@torch.no_grad()
def evaluate(model, check) -> dict:
    """Teacher-forced: a turn is right when every answer token (and </s>) is the argmax (= greedy's output)."""
    model.eval()
    hits: dict[str, list[bool]] = {}
    imgs, vids = check
    for tag, b in [("", b) for b in imgs] + [("" if s == 8 else f"@{s}x{s}", b) for s, b in vids]:
        _, logits, _ = forward(model, b, None)
        pred = logits.argmax(-1)
        for i, spans in enumerate(b["turns"]):
            for t, (a, e, kind) in enumerate(spans):
                ok = bool((pred[i, a - 1:e - 1] == b["input_ids"][i, a:e]).all())
                hits.setdefault(kind + tag, []).append(ok)
                if not tag and kind in IMAGE_KINDS:
                    hits.setdefault(f"turn{min(t + 1, 4)}", []).append(ok)
    model.train()
    return {k: round(100.0 * float(np.mean(v)), 1) for k, v in sorted(hits.items())}


# ------------------------------------------------------------------------------------------ main


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m backends.tiny.train_v2", description=__doc__.split("\n")[0])
    p.add_argument("--init", default="assets/tiny-llava-shapes", help="v1 model folder to start from")
    p.add_argument("--out", default="assets/tiny-llava-shapes")
    p.add_argument("--ckpt", default=None, help="resume checkpoint file (default: <out>.ckpt.pt)")
    p.add_argument("--resume", action="store_true", help="continue from --ckpt")
    p.add_argument("--seed", type=int, default=0, help="new rows/heads seed+2; data seed+2000; check set seed+2999")
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=12, help="image conversations per step")
    p.add_argument("--clips", type=int, default=4, help="video clips per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--min-lr-frac", type=float, default=0.05)
    p.add_argument("--w-ds", type=float, default=0.5)
    p.add_argument("--w-att", type=float, default=0.3)
    p.add_argument("--w-cell", type=float, default=0.0, help="start/end cell aux of direction questions (0 = off)")
    p.add_argument("--dir-weight", type=float, default=None,
                   help="share of direction among video questions (default batches.VIDEO_WEIGHTS)")
    p.add_argument("--image-weights", default=None, metavar="KIND=W,...",
                   help="override some of batches.IMAGE_WEIGHTS (the image question mix), e.g. count=0.2,describe=0.45")
    p.add_argument("--att-color", action="store_true",
                   help="the attention aux also on each described object's colour word (it predicts the shape)")
    p.add_argument("--max-describe", type=int, default=1,
                   help="descriptions per conversation (worded differently): a user may ask twice")
    p.add_argument("--resize-aug", type=float, default=0.0,
                   help="share of training images drawn at another size (80-320 px) and resized to 128 as uploads are")
    p.add_argument("--same-color", type=float, default=0.0,
                   help="share of training scenes with 2-4 objects in one or two colours (counts of two and more)")
    p.add_argument("--w-shared", type=float, default=1.0,
                   help="weight of the colour word's attention target and the shape word of each described object "
                        "whose colour another object shares (1 = as other objects)")
    p.add_argument("--shared-scope", choices=["object", "scene"], default="object",
                   help="--w-shared for those objects, or for every object of a scene where two share a colour (its "
                        "'a' and colour word too)")
    p.add_argument("--kind-loss", default=None, metavar="KIND=W,...",
                   help="weight the LM loss of these kinds' answers (default 1 each), e.g. count=3: a one-word answer "
                        "is 2 of the ~28 answer tokens a description brings")
    p.add_argument("--tower-lr-frac", type=float, default=0.0,
                   help="train the vision tower too, at this fraction of the rate (0 = frozen, as stages 2-6)")
    p.add_argument("--teacher", default=None, help="v1 model folder: its answers to one-turn v1 questions are a target")
    p.add_argument("--w-teach", type=float, default=1.0, help="weight of the KL to --teacher")
    p.add_argument("--teach-temp", type=float, default=1.0, help="temperature of that KL (scaled by its square)")
    p.add_argument("--teach-images", type=int, default=8, help="one-turn v1-kind scenes per step for --teacher")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--feed", choices=["auto", "on", "off"], default="auto",
                   help="draw each step's batches ahead in a second process (the same batches either way); auto: "
                        "on when --threads leaves a core free (two threads on two cores: 40 steps took 72 s with it, "
                        "66 s without)")
    p.add_argument("--log", default=None)
    p.add_argument("--record", default="training_v2.json", help="the run's record, written into --out")
    return p.parse_args(argv)


def kind_weights(text: str | None, kinds, flag: str) -> dict[str, float]:
    """`KIND=W,...` -> {kind: W}; a kind outside `kinds` stops the run with a message naming the option."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        k, v = item.split("=")
        if k not in kinds:
            raise SystemExit(f"{flag}: unknown kind {k!r} (kinds: {', '.join(kinds)})")
        out[k] = float(v)
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    import transformers
    from tqdm import tqdm
    from transformers import AutoModelForImageTextToText

    torch.set_num_threads(args.threads)
    t0 = time.time()
    out = Path(args.out)
    ckpt = Path(args.ckpt or str(out).rstrip("/") + ".ckpt.pt")
    log = progress_log(args.log)

    processor = arch.build_processor()
    voc = Vocab(processor.tokenizer)
    model = AutoModelForImageTextToText.from_pretrained(args.init, dtype=torch.float32)
    model = grow(model, arch.VOCAB_SIZE, args.seed + 2)
    model.config.dynamic_vlm_trained = True  # read by methods/dynamic_vlm.py: trained for variable per-frame counts
    model.generation_config.max_new_tokens = 48
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(args.tower_lr_frac > 0)
    torch.manual_seed(args.seed + 2)
    ds_head = torch.nn.Linear(model.config.text_config.hidden_size, arch.VOCAB_SIZE)
    heads = [ds_head]
    cell_head = None
    if args.w_cell > 0:  # only then, so a run without it draws the same random numbers as before the option
        cell_head = torch.nn.Linear(model.config.text_config.hidden_size, 18)
        heads.append(cell_head)
    kinds = None
    if args.dir_weight is not None:
        rest = {k: v for k, v in VIDEO_WEIGHTS.items() if k != "direction"}
        kinds = {"direction": args.dir_weight, **{k: v * (1 - args.dir_weight) / sum(rest.values())
                                                  for k, v in rest.items()}}
    img_w = {**IMAGE_WEIGHTS, **kind_weights(args.image_weights, IMAGE_WEIGHTS, "--image-weights")}
    args.kind_loss_w = kind_weights(args.kind_loss, [*IMAGE_WEIGHTS, *VIDEO_WEIGHTS], "--kind-loss")
    tower = {id(p) for p in model.model.vision_tower.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in tower]
    rest += [p for h in heads for p in h.parameters()]
    groups = [dict(params=rest, scale=1.0)]
    if args.tower_lr_frac > 0:  # its own group: the schedule scales its rate (g["scale"])
        groups.append(dict(params=list(model.model.vision_tower.parameters()), scale=args.tower_lr_frac))
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng = np.random.default_rng(args.seed + 2000)
    start, curve, ema = 1, [], {}
    if args.resume and ckpt.exists():
        st = torch.load(ckpt, weights_only=False)  # our own file, written below
        model.load_state_dict(st["model"])
        ds_head.load_state_dict(st["ds_head"])
        if cell_head is not None and "cell_head" in st:
            cell_head.load_state_dict(st["cell_head"])
        opt.load_state_dict(st["opt"])
        rng.bit_generator.state = st["rng"]
        start, curve, ema = st["step"] + 1, st["curve"], st["ema"]
        t0 -= st["minutes"] * 60
        log(f"# resumed at step {start} from {ckpt}")
    teacher, v1_w = None, None
    if args.teacher:  # v1 counted at 98-100% on held-out scenes; v2 lost some of it (learning without forgetting)
        teacher = AutoModelForImageTextToText.from_pretrained(args.teacher, dtype=torch.float32).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        v1_w = {k: (v if k in KINDS else 0.0) for k, v in img_w.items()}  # its scenes: the v1 kinds, no descriptions
    check = make_check(args.seed + 2999, voc, 250, 120)
    model.train()
    log(f"# python -m backends.tiny.train_v2 {' '.join(argv)}")
    def train_step(step: int, work, tb, rng_state: dict):
        """One optimiser step on one image batch, each clip alone and the teacher's batch; evaluates and saves the
        model and the checkpoint (with the data generator's state after this step's draw) every --eval-every."""
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        lr = args.lr * (step / args.warmup if step <= args.warmup else
                        args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"]
        # Each clip on its own (clip lengths vary 16..768 tokens: padding them into one batch doubled the cost);
        # gradients accumulate, clips weighted 1/clips so video counts like one batch.
        opt.zero_grad(set_to_none=True)
        parts: dict[str, float] = {}
        for name, b, w in work:
            loss, got = losses(model, ds_head, b, args, cell_head)
            (w * loss).backward()
            add_parts(parts, got, name, w)
        if tb is not None:
            l_t = teacher_loss(model, teacher, tb, args.teach_temp)
            (args.w_teach * l_t).backward()
            add_parts(parts, {"teach": l_t.item()}, "img", 1.0)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        smooth(ema, parts)
        if step % 25 == 0:
            bar.set_postfix({k: f"{v:.2f}" for k, v in ema.items()})
        if step % 100 == 0 and bar.disable:  # no terminal: a progress line in the log instead of the bar
            log(f"  step {step}/{args.steps} {(time.time() - t0) / 60:.1f} min  "
                + " ".join(f"{k} {v:.3f}" for k, v in ema.items()))
        if step % args.eval_every == 0 or step == args.steps:
            acc = evaluate(model, check)
            minutes = (time.time() - t0) / 60
            curve.append(dict(step=step, minutes=round(minutes, 1), **acc, **{f"loss_{k}": round(v, 4)
                                                                                for k, v in ema.items()}))
            log(f"step {step:5d} {minutes:6.1f} min  " + " ".join(f"{k} {v:.1f}" for k, v in acc.items())
                + "  | " + " ".join(f"{k} {v:.3f}" for k, v in ema.items()))
            # The model at every evaluation (so a stopped run leaves one); the run's result is its last step. Picking a
            # "best" evaluation let a kind stuck near chance (direction) choose the step by noise.
            save_model(model, processor, out)
            torch.save(dict(model=model.state_dict(), ds_head=ds_head.state_dict(), opt=opt.state_dict(),
                            cell_head=cell_head.state_dict() if cell_head is not None else None,
                            rng=rng_state, step=step, curve=curve, ema=ema, minutes=minutes), ckpt)

    bar = tqdm(range(start, args.steps + 1), desc="train v2", mininterval=10, disable=None)
    # The batches: drawn ahead in a second process (feed.py: the same batches from the same generator), or here.
    # The cores this process may run on, not os.cpu_count() (a container can report the host's).
    ahead = args.feed == "on" or (args.feed == "auto" and args.threads < len(os.sched_getaffinity(0)))
    feed = Feed(args, img_w, kinds, v1_w, rng.bit_generator.state, start) if ahead else contextlib.nullcontext()
    with feed:
        for step in bar:
            if ahead:
                work, tb, rng_state = feed.next(step)
            else:
                work, tb = step_batches(rng, voc, args, img_w, kinds, v1_w)
                rng_state = rng.bit_generator.state
            train_step(step, work, tb, rng_state)
    minutes = (time.time() - t0) / 60
    info = dict(command="python -m backends.tiny.train_v2 " + " ".join(argv), args=vars(args),
                seeds=dict(new_rows_and_heads=args.seed + 2, train_data=args.seed + 2000,
                           check_set=args.seed + 2999),
                steps=args.steps, check_accuracy_last=curve[-1] if curve else None, curve=curve,
                minutes=round(minutes, 1),
                versions=dict(python=platform.python_version(), torch=torch.__version__,
                              transformers=transformers.__version__, numpy=np.__version__),
                params=sum(p.numel() for p in model.parameters()))
    (out / args.record).write_text(json.dumps(info, indent=1) + "\n")
    log(f"# done in {minutes:.1f} min")
    return info


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

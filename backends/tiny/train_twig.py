"""Train a TwigVLM twig on a built-in model folder (base frozen); the twig lands beside it as twig.safetensors.

    nohup python -m backends.tiny.train_twig --model assets/tiny-llava-shapes --minutes 15 > runs/twig.log 2>&1 &

K and T: the paper grows a T = 3 twig after K = 2 of LLaMA-2-7B's 32 layers (draft = 5 of 32 layers). Scaled to
this 8-layer decoder, K = 2 x 8 / 32 = 0.5 becomes the first layer (K = 1, the least a twig can follow) and
T = 3 x 8 / 32 = 0.75 becomes T = 2: a one-layer twig on one base layer has too little depth to draft
multi-word descriptions, so the draft model is 3 of 8 layers (`--k`, `--t` change both).
Loss at every answer position: cross-entropy on the data (the paper's) + KL from the frozen base's next-token
distribution to the twig's (ours: the twig drafts for this base, and agreeing with it is what self-speculative
decoding accepts). The twig starts as copies of base layers K..K+T-1, the final norm and the LM head.
Every `--eval-every` steps the twig's agreement with the base (argmax at answer positions of fixed check
batches) is logged, the best twig so far is written to --out (fp16, with K, T in its metadata) and a checkpoint
for --resume to --ckpt. One torch thread; deterministic for a seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .distill import batch, check_set, embed, record, run_args, start_run
from .twig import TWIG_FILE, Twig, load_twig


def twig_logits(model, twig: Twig, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(twig logits, base logits), both [B, L, vocab]; only the twig carries gradients."""
    lm = model.model.language_model
    with torch.no_grad():
        out = lm(inputs_embeds=embed(model, b), attention_mask=b["attention_mask"], output_hidden_states=True)
        base = model.lm_head(out.last_hidden_state)
        hk = out.hidden_states[twig.k]  # output of base layer K-1
        pe = lm.rotary_emb(hk, torch.arange(hk.shape[1])[None])
    return twig.logits(twig(hk, pe)), base


def losses(model, twig: Twig, b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cross-entropy, KL(base || twig), agreement) over the positions that predict an answer token."""
    logits, base = twig_logits(model, twig, b)
    sel = b["labels"][:, 1:] != -100
    lo, ba = logits[:, :-1][sel], base[:, :-1][sel]
    ce = F.cross_entropy(lo, b["labels"][:, 1:][sel])
    kl = F.kl_div(lo.log_softmax(-1), ba.log_softmax(-1), log_target=True, reduction="batchmean")
    return ce, kl, (lo.argmax(-1) == ba.argmax(-1)).float().mean()


@torch.no_grad()
def agreement(model, twig: Twig, check: list[dict]) -> float:
    twig.eval()
    vals = [float(losses(model, twig, b)[2]) for b in check]
    twig.train()
    return 100.0 * float(np.mean(vals))


def parse_args(argv):
    extra = [("--k", dict(type=int, default=1)), ("--t", dict(type=int, default=2))]
    return run_args(__doc__, "twig", TWIG_FILE, 1e-3, extra).parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    log, model, proc, voc = start_run(args)
    out = Path(args.out or Path(args.model) / TWIG_FILE)
    twig = (load_twig(model, Path(args.init)) if args.init else Twig.from_base(model, args.k, args.t)).train()
    for p in twig.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(twig.parameters(), lr=args.lr, weight_decay=0.0)
    rng, step, best, curve = np.random.default_rng(args.seed), 0, -1.0, []
    ckpt = Path(args.ckpt)
    if args.resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        twig.load_state_dict(state["twig"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state, step, best, curve = state["rng"], state["step"], state["best"], state["curve"]
        log(f"resumed at step {step} (best agreement {best:.1f}%)")
    check = check_set(model, voc, args.seed)
    log(f"twig K={twig.k} T={twig.t} on {args.model} (from {args.init or 'base layers'}): start agreement "
        f"{agreement(model, twig, check):.1f}%")
    total = min(args.steps, 10**9)
    while step < args.steps and log.minutes < args.minutes:
        # cosine decay over the time budget (steps are not known in advance on a shared core)
        frac = min(1.0, log.minutes / args.minutes)
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        ce, kl, agree = losses(model, twig, batch(model, voc, rng, args.batch))
        opt.zero_grad()
        (ce + kl).backward()
        torch.nn.utils.clip_grad_norm_(twig.parameters(), 1.0)
        opt.step()
        step += 1
        if step % args.eval_every == 0 or step == total:
            acc = agreement(model, twig, check)
            curve.append((step, round(log.minutes, 2), round(acc, 2)))
            log(f"step {step}: ce {float(ce.detach()):.3f} kl {float(kl.detach()):.3f} check agreement {acc:.1f}% "
                f"(best {best:.1f}%)")
            if acc > best:
                best = acc
                twig.save(out, base=str(args.model))
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"twig": twig.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                        "step": step, "best": best, "curve": curve}, ckpt)
    final = agreement(model, twig, check)  # the steps since the last evaluation count too
    if final > best:
        best = final
        twig.save(out, base=str(args.model))
        log(f"final: check agreement {final:.1f}% (saved)")
    result = {"steps": step, "minutes": round(log.minutes, 2), "best_check_agreement": round(best, 2),
              "curve": curve, "file": str(out)}
    record(out.with_suffix(".json"), "python -m backends.tiny.train_twig", args, result)
    log(f"done: {step} steps, best check agreement {best:.1f}% -> {out}")
    return result


if __name__ == "__main__":
    main()

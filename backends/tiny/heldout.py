"""Held-out set for the tiny model (drawn by the independent `render_eval` renderer) and its scorer.

    python -m backends.tiny.heldout --out assets/heldout            # write the set
    python -m backends.tiny.heldout --score assets/tiny-llava-shapes # score a saved model on it

The set: `heldout.jsonl` (one line per question: `{"image": "img/00001.png", "question", "answer", "kind"}`, image
paths relative to the jsonl file) + PNGs. 600 questions, 120 per kind, two questions (of different kinds) per
image; a quarter of the images are noisy (and 96 px, to keep the folder small), exists is balanced yes/no.
The seed (default 424242) is never used by `train.py`, whose seeds are seed, seed+1, seed+999, seed+1000.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .scenes import KINDS, make_question, normalize, sample_scene

HELDOUT_SEED = 424242
PNG_SIZES = (96, 112, 128, 144, 160)  # small files; the processor resizes to 128 anyway


def write_set(out: str | Path = "assets/heldout", seed: int = HELDOUT_SEED, per_kind: int = 120,
              per_image: int = 2) -> Path:
    """Write the held-out set; returns the jsonl path."""
    from .render_eval import render

    out = Path(out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Kind slots, shuffled, then grouped `per_image` at a time with distinct kinds per image where possible.
    need = {k: per_kind for k in KINDS}
    lines, idx = [], 0
    while sum(need.values()) > 0:
        objs = sample_scene(rng)
        open_kinds = [k for k in KINDS if need[k] > 0]
        rng.shuffle(open_kinds)
        qs = []
        for k in open_kinds:
            if len(qs) == per_image:
                break
            q = make_question(objs, k, rng)
            if q is not None and k == "exists" and sum(
                    1 for ln in lines + qs if ln["kind"] == "exists" and ln["answer"] == q["answer"]) >= per_kind // 2:
                continue  # keep yes/no balanced
            if q is not None:
                qs.append(q)
        if not qs:
            continue
        idx += 1
        name = f"img/{idx:05d}.png"
        noisy = bool(rng.random() < 0.25)  # noisy PNGs compress badly: keep them few and small
        img = render(objs, rng, size=96 if noisy else int(rng.choice(PNG_SIZES)), noise=noisy)
        img.save(out / name, optimize=True)
        for q in qs:
            need[q["kind"]] -= 1
            lines.append(dict(image=name, question=q["question"], answer=q["answer"], kind=q["kind"],
                              scene=[o.to_dict() for o in objs]))
    path = out / "heldout.jsonl"
    with open(path, "w") as f:
        for ln in lines:
            f.write(json.dumps(ln) + "\n")
    return path


def load_set(path: str | Path = "assets/heldout/heldout.jsonl") -> list[dict]:
    """The held-out items with their images loaded (PIL, RGB)."""
    from PIL import Image

    path = Path(path)
    if path.is_dir():
        path = path / "heldout.jsonl"
    items = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    cache: dict[str, object] = {}
    for it in items:
        if it["image"] not in cache:
            with Image.open(path.parent / it["image"]) as im:
                cache[it["image"]] = im.convert("RGB")
        it["pil"] = cache[it["image"]]
    return items


def prompt(processor, question: str) -> str:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True)


def score(model, processor, items: list[dict], shuffle: bool = False, seed: int = 0, max_new_tokens: int = 3) -> dict:
    """Accuracy (%) of greedy `generate()` through the processor, overall (mean over questions) and per kind.

    `shuffle=True` gives every question the image of another item (fixed permutation): image dependence.
    """
    import torch

    images = [it["pil"] for it in items]
    if shuffle:
        perm = np.random.default_rng(seed).permutation(len(items))
        images = [images[i] for i in perm]
    hits: dict[str, list[bool]] = {k: [] for k in KINDS}
    preds = []
    model.eval()
    with torch.no_grad():
        for it, img in zip(items, images):
            enc = processor(images=img, text=prompt(processor, it["question"]), return_tensors="pt")
            enc["pixel_values"] = enc["pixel_values"].to(model.dtype)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            text = processor.tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            pred = normalize(text)
            preds.append(pred)
            hits[it["kind"]].append(pred == normalize(it["answer"]))
    res = {k: round(100.0 * float(np.mean(v)), 1) for k, v in hits.items() if v}
    res["overall"] = round(100.0 * float(np.mean([h for v in hits.values() for h in v])), 1)
    res["n"] = len(items)
    res["_preds"] = preds
    return res


def text_only_rate(items: list[dict]) -> dict:
    """Best text-only guess: the most frequent answer of each question text, scored on the set itself."""
    by_q: dict[str, list[str]] = {}
    for it in items:
        by_q.setdefault(it["question"], []).append(it["answer"])
    best = {q: max(set(a), key=a.count) for q, a in by_q.items()}
    hits: dict[str, list[bool]] = {k: [] for k in KINDS}
    for it in items:
        hits[it["kind"]].append(best[it["question"]] == it["answer"])
    res = {k: round(100.0 * float(np.mean(v)), 1) for k, v in hits.items() if v}
    res["overall"] = round(100.0 * float(np.mean([h for v in hits.values() for h in v])), 1)
    return res


def load_model(folder: str | Path):
    """The shipped model, loaded exactly as the acceptance test does (fp32, Auto classes)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder, dtype="float32").eval()
    processor = AutoProcessor.from_pretrained(folder)
    return model, processor


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m backends.tiny.heldout", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="assets/heldout", help="folder for heldout.jsonl + img/")
    p.add_argument("--seed", type=int, default=HELDOUT_SEED)
    p.add_argument("--per-kind", type=int, default=120)
    p.add_argument("--score", metavar="MODEL_DIR", default=None,
                   help="score this saved model on the set in --out instead of writing it")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.score is None:
        path = write_set(args.out, args.seed, args.per_kind)
        n_img = len(list((Path(args.out) / "img").glob("*.png")))
        size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
        print(f"wrote {path} ({n_img} images, {size / 1e6:.2f} MB)")
        return dict(path=str(path), images=n_img, bytes=size)
    items = load_set(Path(args.out) / "heldout.jsonl")
    model, processor = load_model(args.score)
    full = score(model, processor, items)
    shuf = score(model, processor, items, shuffle=True)
    prior = text_only_rate(items)
    for name, r in (("all 64 tokens", full), ("shuffled images", shuf), ("text-only best guess", prior)):
        print(f"{name:22s} overall {r['overall']:5.1f}  " + "  ".join(f"{k} {r[k]:5.1f}" for k in KINDS))
    return dict(full={k: v for k, v in full.items() if k != "_preds"},
                shuffled={k: v for k, v in shuf.items() if k != "_preds"}, text_only=prior)


if __name__ == "__main__":
    main()

"""Random-weight LLaVA models shaped like real ones, built from a config (no hub), for tests and benchmarks.

    build("interleave-0.5b", out_dir)   # SigLIP-so400m/14@384 (729 tokens) + Qwen2-0.5B: llava-interleave-qwen-0.5b
    build("onevision-tiny", out_dir)    # LLaVA-OneVision's structure (SigLIP, newline token, Qwen2) in miniature
    build("llava-1.5-7b", out_dir)      # CLIP ViT-L/14@336 (576 tokens + CLS, layer -2) + Llama-2-7B: llava-1.5-7b-hf
                                        # (13.5 GB in fp16: for the GPU benchmarks)
    build("llava-1.5-tiny", out_dir)    # LLaVA-1.5's structure (CLIP with CLS, features from layer -2, Llama) in
                                        # miniature: what tests use to cover that family's code paths

The word-level tokenizer of the built-in model stands in for the real one (token ids stay below its vocab).
Text weights get a larger init so greedy output varies with the input (a default-init random LM repeats
one token, and every method would trivially agree).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaProcessor,
    Qwen2Config,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from backends.tiny.arch import CHAT_TEMPLATE, build_tokenizer

SHAPES = {
    "interleave-0.5b": dict(
        vision=("siglip", dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                               image_size=384, patch_size=14)),
        text=("qwen2", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                            num_attention_heads=14, num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True)),
        feature_layer=-1, strategy="full"),
    "onevision-tiny": dict(
        vision=("siglip", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                               image_size=84, patch_size=14)),
        text=("qwen2", dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                            num_attention_heads=4, num_key_value_heads=2)),
        feature_layer=-1, strategy="full", onevision=True),
    "llava-1.5-7b": dict(
        vision=("clip", dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                             image_size=336, patch_size=14, projection_dim=768)),
        text=("llama", dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                            rms_norm_eps=1e-5)),
        feature_layer=-2, strategy="default"),
    "llava-1.5-tiny": dict(
        vision=("clip", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                             image_size=84, patch_size=14)),
        text=("llama", dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                            num_attention_heads=4, num_key_value_heads=4)),
        feature_layer=-2, strategy="default"),
}


def build(shape: str, out: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32, text_scale: float = 0.0,
          device: str = "cpu"):
    """Write a random model of `shape` and its processor to `out`; returns the folder path.

    device: where the random init runs ("cuda" draws a 7B model's weights in seconds instead of minutes).

    text_scale: multiply the LM's matrices by this (0: keep the init; tests use ~8 so answers vary)."""
    spec = SHAPES[shape]
    tok = build_tokenizer()
    vkind, vargs = spec["vision"]
    tkind, targs = spec["text"]
    vcfg = (CLIPVisionConfig if vkind == "clip" else SiglipVisionConfig)(**vargs)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    tcfg = (LlamaConfig if tkind == "llama" else Qwen2Config)(**targs, **ids)
    common = dict(vision_config=vcfg, text_config=tcfg, image_token_id=tok.convert_tokens_to_ids("<image>"),
                  vision_feature_layer=spec["feature_layer"], vision_feature_select_strategy=spec["strategy"],
                  tie_word_embeddings=targs.get("tie_word_embeddings", False))
    if spec.get("onevision"):
        side = vargs["image_size"]
        cfg = LlavaOnevisionConfig(**common, video_token_id=tok.convert_tokens_to_ids("<unk>"),
                                   image_grid_pinpoints=[[side, side], [side, 2 * side], [2 * side, side]])
    else:
        cfg = LlavaConfig(**common)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: no fp32 copy of a large model in memory
    try:
        with torch.device(device):
            model = (LlavaOnevisionForConditionalGeneration if spec.get("onevision") else
                     LlavaForConditionalGeneration)(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    if text_scale:
        with torch.no_grad():
            for p in model.model.language_model.parameters():
                if p.ndim == 2:
                    p.mul_(text_scale)
    side = vargs["image_size"]
    out = Path(out)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    if spec.get("onevision"):  # the pieces a OneVision checkpoint ships (its processor needs torchvision)
        LlavaOnevisionImageProcessorPil(size={"height": side, "width": side},
                                        image_grid_pinpoints=cfg.image_grid_pinpoints).save_pretrained(out)
        tok.save_pretrained(out)
        (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
        return out
    if vkind == "clip":
        ip = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    else:
        ip = SiglipImageProcessorPil(size={"height": side, "width": side})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=vargs["patch_size"],
                          vision_feature_select_strategy=spec["strategy"],
                          num_additional_image_tokens=1 if vkind == "clip" else 0, chat_template=CHAT_TEMPLATE)
    proc.save_pretrained(out)
    return out

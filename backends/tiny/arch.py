"""Architecture of the built-in tiny LLaVA: word-level tokenizer, processor and model config.

Everything here is built locally (no hub): the tokenizer is trained on the task's own word list, the
processor is a stock `LlavaProcessor`, the model a stock `LlavaForConditionalGeneration`. So the saved
folder loads through the same `from_pretrained` path as any Hugging Face LLaVA checkpoint.

Widths are multiples of 32 because bitsandbytes 4-bit on CPU asserts `out_features % 32 == 0`.
"""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle"]
POSITIONS = ["top left", "top middle", "top right", "middle left", "center", "middle right",
             "bottom left", "bottom middle", "bottom right"]
NUMBERS = ["zero", "one", "two", "three", "four"]
# Every word of the five question templates and their answers, plus the prompt's "answer :" cue.
TEMPLATE_WORDS = "what color is the shape at how many shapes are there a yes no none answer : ?".split()
# Words the v2 task adds (descriptions, video questions), appended after v1's ids so v1 ids never move.
V2_WORDS = "describe image in list and , which way does move up down still start end".split()

IMAGE_SIZE = 128  # processor output side (pixels)
PATCH = 16  # 8x8 = 64 patches: does not line up with the 3x3 scene grid on purpose
MERGE_POSITIONS = True  # one token per position phrase (see build_tokenizer)
ROPE_THETA = 1e6
VOCAB_SIZE = 96  # embedding rows (padded past the real vocabulary so lm_head width is a multiple of 32)
V1_VOCAB_SIZE = 64  # the v1 model's rows (its 51 words); v2 grows the matrices to VOCAB_SIZE

# The prompt: image tokens (one entry per image or video frame), then the question, then the cue the answer
# follows. Assistant turns render as `answer : {text} </s> `, so a multi-turn `messages` list gives exactly the
# packed training format `<image>... q1 answer : a1 </s> q2 answer :`.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% if m['content'] is string %}{{ m['content'] }} {% else %}"
    "{% for c in m['content'] %}{% if c['type'] in ['image', 'video'] %}<image> "
    "{% elif c['type'] == 'text' %}{{ c['text'] }} {% endif %}{% endfor %}{% endif %}"
    "{% elif m['role'] == 'assistant' %}answer : "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    " </s> {% endif %}{% endfor %}{% if add_generation_prompt %}answer :{% endif %}"
)


def words() -> list[str]:
    """The v1 task vocabulary (without specials), in a fixed order (the v1 tokenizer is trained on it)."""
    out: list[str] = []
    for w in TEMPLATE_WORDS + COLORS + SHAPES + [w for p in POSITIONS for w in p.split()] + NUMBERS:
        if w not in out:
            out.append(w)
    return out


def position_token(phrase: str) -> str:
    """The single token a position phrase becomes ("top left" -> "top_left", "center" -> "center")."""
    return "_".join(phrase.split())


def build_tokenizer(merge_positions: bool | None = None) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on the task's words: lower-cased, '?' split off with or without a space.

    With `merge_positions` (default `MERGE_POSITIONS`) each two-word position phrase becomes one token
    ("top  Left" -> "top_left"), so the decoder can look a grid cell up with a single query token.
    """
    merge = MERGE_POSITIONS if merge_positions is None else merge_positions
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    norms = [normalizers.Lowercase()]
    corpus = words()
    if merge:
        for p in POSITIONS:
            if " " in p:
                a, b = p.split()
                norms.append(normalizers.Replace(Regex(rf"\b{a}\s+{b}\b"), position_token(p)))
        corpus = corpus + [position_token(p) for p in POSITIONS if " " in p]
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # "there?" -> "there", "?"
    trainer = trainers.WordLevelTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIALS, min_frequency=1)
    tok.train_from_iterator(corpus, trainer=trainer)  # one word per item: no phrase merging here
    # v2: append the new words after v1's ids (a trained WordLevel model cannot grow, so rebuild it from its vocab)
    vocab = tok.get_vocab()
    for w in V2_WORDS:
        vocab.setdefault(w, len(vocab))
    tok.model = models.WordLevel(vocab=vocab, unk_token="<unk>")
    # Decoding: position tokens back to their phrase, words joined by spaces, no space before , or ?
    tok.decoder = decoders.Sequence([decoders.Replace("_", " "), decoders.WordPiece(prefix="##", cleanup=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def build_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> LlavaProcessor:
    """A stock LLaVA processor: CLIP normalisation at 128 px, 64 image tokens (CLS dropped)."""
    tokenizer = tokenizer or build_tokenizer()
    side = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ip = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=side)
    return LlavaProcessor(
        image_processor=ip, tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, image_token="<image>", chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer: PreTrainedTokenizerFast, **text_overrides) -> LlavaConfig:
    """CLIP tower (4 layers, 128 wide, CLS) + LLaVA projector + Llama decoder (8 layers, RoPE).

    `vision_feature_layer=-1`: a tower trained from scratch must feed its last layer, or that layer gets no
    gradient (LLaVA's usual -2 assumes a pretrained CLIP).
    """
    vc = CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                          image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=128)
    text = dict(vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=512, num_hidden_layers=8,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                # theta 1e6 (not 1e4): most rotary pairs then stay nearly still over the 5-130 token distances
                # between question words and image tokens, leaving them free for content (cell) matching.
                rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    text.update(text_overrides)
    tc = LlamaConfig(**text)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                      image_seq_length=(IMAGE_SIZE // PATCH) ** 2, vision_feature_layer=-1,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu",
                      tie_word_embeddings=False)
    return cfg


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **text_overrides) -> LlavaForConditionalGeneration:
    """A freshly initialised model. Text embeddings start at N(0, 1) so question words are not drowned by
    image tokens (default init leaves words at norm ~0.7 next to image tokens at ~48)."""
    torch.manual_seed(seed)
    cfg = build_config(tokenizer, **text_overrides)
    cfg._attn_implementation = "sdpa"
    model = LlavaForConditionalGeneration(cfg)
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight.normal_(0.0, 1.0)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.do_sample = False
    return model.eval()

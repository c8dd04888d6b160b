"""Model adapters: the named seams of a LLaVA-architecture model that methods and the runner use.

A method never checks a model's class name; it asks the adapter for the vision tower, the projector, the
decoder layers, the rotary embedding, where the image tokens sit and the patch grid of each image.

A model may feed the LLM from several vision encoders (`encoders`, one `EncoderSpan` each): every image's tokens
are then each encoder's tokens in turn (slots `offset .. offset + rows * cols - 1`). Seams that only make sense
for one encoder (`grid`, `vision_forward`, `vision_qk`) refuse on such a model with a message saying why, so a
method built on them refuses too instead of silently dropping an encoder's tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backends.types import RequestError


class UnsupportedModel(ValueError):
    pass


@dataclass(frozen=True)
class EncoderSpan:
    """One vision encoder's tokens within an image's visual tokens."""

    name: str  # e.g. "clip", "conv"
    grid: tuple[int, int]  # patch rows, cols
    offset: int  # slot of its first token among the image's visual tokens

    @property
    def size(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass
class LlavaAdapter:
    """Seams of `LlavaForConditionalGeneration` (LLaVA-1.5 and the built-in model) in transformers 5.24."""

    model: torch.nn.Module
    processor: object
    model_type = "llava"
    suffix_tokens = 0  # tokens the model appends after each image's patches (OneVision: a newline)

    def __post_init__(self) -> None:
        cfg = self.model.config
        if getattr(cfg, "model_type", "") != self.model_type:
            raise UnsupportedModel(f"model type {getattr(cfg, 'model_type', '?')!r} is not a {self.model_type} model")
        self.text_config = cfg.text_config
        self.vision_config = cfg.vision_config
        self.image_token_id = int(cfg.image_token_id)
        self.feature_layer = cfg.vision_feature_layer
        self.select_strategy = cfg.vision_feature_select_strategy
        side = self.vision_config.image_size // self.vision_config.patch_size
        # one encoder, named by its config type, with its patch grid (LLaVA-1.5: 24x24; built-in: 8x8)
        self.encoders = [EncoderSpan(str(getattr(self.vision_config, "model_type", "vision")).split("_")[0],
                                     (side, side), 0)]
        # CLIP puts a CLS token first; the "default" strategy drops it before the projector.
        self.num_prefix_tokens = 1 if self.select_strategy == "default" else 0

    # ---- seams -------------------------------------------------------------------------------------
    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.vision_tower

    @property
    def vision_layers(self) -> torch.nn.ModuleList:
        return self.model.model.vision_tower.encoder.layers

    @property
    def projector(self) -> torch.nn.Module:
        return self.model.model.multi_modal_projector

    @property
    def language_model(self) -> torch.nn.Module:
        return self.model.model.language_model

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.model.model.language_model.layers

    @property
    def rotary_emb(self) -> torch.nn.Module:
        return self.model.model.language_model.rotary_emb

    @property
    def embed_tokens(self) -> torch.nn.Module:
        return self.model.model.language_model.embed_tokens

    @property
    def lm_head(self) -> torch.nn.Module:
        return self.model.lm_head

    @property
    def attn_implementation(self) -> str:
        return str(self.text_config._attn_implementation)

    @property
    def tokens_per_image(self) -> int:
        return sum(e.size for e in self.encoders)

    @property
    def grid(self) -> tuple[int, int]:
        """Patch rows, cols of one image; refused when the tokens come from several encoders' grids."""
        self.one_encoder("reads the visual tokens as one patch grid (rows x cols)")
        return self.encoders[0].grid

    def one_encoder(self, what: str) -> None:
        """Raise `RequestError` on a multi-encoder model: a method that `what` cannot split its tokens."""
        if len(self.encoders) > 1:
            parts = " + ".join(f"{e.name} {e.grid[0]}x{e.grid[1]}" for e in self.encoders)
            raise RequestError(f"this method {what}, but this model feeds the LLM {len(self.encoders)} vision "
                               f"encoders' tokens ({parts}); it runs on one-encoder models only")

    def project_tokens(self, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Projector per token: hidden [V, Dv], index [V] the slot each token stands for -> [V, D]."""
        return self.project(hidden)

    def map_rows(self, shares: torch.Tensor) -> list[list[float]]:
        """One frame's per-slot shares [tokens_per_image] as the rows x cols map a card draws. Several encoders:
        each encoder's map repeated onto the finest grid all of them divide (8x8 and 6x6: 24x24), then averaged,
        so a cell reads as the share of the encoders' tokens covering it that reach the LLM."""
        if len(self.encoders) == 1:
            return shares.reshape(self.encoders[0].grid).tolist()
        rows = math.lcm(*(e.grid[0] for e in self.encoders))
        cols = math.lcm(*(e.grid[1] for e in self.encoders))
        maps = [shares[e.offset:e.offset + e.size].reshape(1, 1, *e.grid).float() for e in self.encoders]
        return torch.stack([F.interpolate(m, size=(rows, cols), mode="nearest")[0, 0] for m in maps]).mean(0).tolist()

    def encode(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Vision stage of a run: (states of the tower as `vision_forward` returns them, the tokens the projector
        reads [F, tokens_per_image, Dv])."""
        states = self.vision_forward(pixel_values)
        return states, states[-1][:, self.num_prefix_tokens:]

    # ---- operations --------------------------------------------------------------------------------
    def prompt(self, question: str, n_images: int) -> str:
        """The model's own chat template with one image entry per frame."""
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def preprocess(self, frames: list, question: str) -> dict[str, torch.Tensor]:
        """Processor call: `input_ids` [1, L] with N image tokens per frame, `pixel_values` [F, 3, H, W]."""
        text = self.prompt(question, len(frames))
        return self.processor(images=frames, text=text, return_tensors="pt")

    @property
    def feature_depth(self) -> int:
        """How many vision layers run before the features LLaVA reads (hidden_states[i] = output of layer i-1)."""
        return self.feature_layer % (len(self.vision_layers) + 1)

    def vision_forward(self, pixel_values: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """Run the tower up to the feature layer (or to layer `stop`, exclusive). Returns states[i] = input of
        layer i, [F, prefix + N, Dv]; states[-1] is the output LLaVA projects. Later layers are skipped: their
        output is never used."""
        self.one_encoder("runs or edits one vision tower's layers")
        return self.tower_forward(pixel_values, stop)

    def tower_forward(self, pixel_values: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """`vision_forward` of the first (CLIP-style) tower, on any model."""
        tower = self.vision_tower
        h = tower.embeddings(pixel_values)
        if hasattr(tower, "pre_layrnorm"):  # CLIP has one; SigLIP does not
            h = tower.pre_layrnorm(h)
        states = [h]
        for layer in self.vision_layers[: self.feature_depth if stop is None else stop]:
            h = layer(h, None)
            states.append(h)
        return states

    def vision_qk(self, layer: int, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys that vision layer `layer` computes from its input `states` [F, T, Dv]:
        two [F, T, Dv] tensors (heads not split). Recomputed here so the tower keeps its fast kernel."""
        self.one_encoder("scores tokens by one vision tower's attention")
        return self.tower_qk(layer, states)

    def tower_qk(self, layer: int, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`vision_qk` of the first tower, on any model."""
        mod = self.vision_layers[layer]
        x = mod.layer_norm1(states)
        return mod.self_attn.q_proj(x), mod.self_attn.k_proj(x)

    @property
    def vision_heads(self) -> int:
        return int(self.vision_config.num_attention_heads)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Projector: [..., vision width] -> [..., LLM width]."""
        return self.projector(hidden)

    def image_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Indices of image tokens in `input_ids` [1, L]: [F * (N + suffix_tokens)], frames in order."""
        return (input_ids[0] == self.image_token_id).nonzero().flatten()

    def frame_suffix(self) -> torch.Tensor | None:
        """Embeddings [suffix_tokens, D] placed after each image's visual tokens, or None."""
        return None

    @property
    def head_dim(self) -> int:
        tc = self.text_config
        return int(getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads)

    def last_token_scores(self, layer: int, hidden: torch.Tensor, position_embeddings, keys: torch.Tensor,
                          rope: bool = True, causal: bool = False) -> torch.Tensor:
        """Head-mean attention of the prompt's last token over `keys`: [len(keys)].
        causal=True: the model's own attention row (softmax over every key), FastV's official score;
        causal=False: softmax over `keys` only, FEATHER's score (rope=False) and its FastV baseline (rope=True)."""
        last = keys.new_tensor([hidden.shape[1] - 1])
        return self.llm_attention(layer, hidden, position_embeddings, last, keys, rope=rope, causal=causal).mean(0)[0]

    def llm_attention(self, layer: int, hidden: torch.Tensor, position_embeddings, queries: torch.Tensor,
                      keys: torch.Tensor, rope: bool = True, causal: bool = False) -> torch.Tensor:
        """Attention probabilities decoder layer `layer` would compute, recomputed from its own projections.

        hidden: [1, T, D] the layer's input (before its input norm); position_embeddings: (cos, sin) [1, T, d];
        queries, keys: LongTensors of sequence indices. Softmax over `keys` only (as FastV/FEATHER score), or,
        with causal=True, over every key up to the query (the model's own attention) before picking `keys`.
        rope=False scores without rotary (FEATHER). Returns [H, len(queries), len(keys)] in float32.
        """
        mod = self.layers[layer]
        attn, d = mod.self_attn, self.head_dim
        x = mod.input_layernorm(hidden)
        kidx = torch.arange(hidden.shape[1], device=hidden.device) if causal else keys
        q = attn.q_proj(x[:, queries]).view(1, len(queries), -1, d).transpose(1, 2)  # [1, H, q, d]
        k = attn.k_proj(x[:, kidx]).view(1, len(kidx), -1, d).transpose(1, 2)  # [1, Hkv, k, d]
        if rope:
            cos, sin = position_embeddings
            q = q * cos[:, queries].unsqueeze(1) + rotate_half(q) * sin[:, queries].unsqueeze(1)
            k = k * cos[:, kidx].unsqueeze(1) + rotate_half(k) * sin[:, kidx].unsqueeze(1)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped-query attention
        logits = (q @ k.transpose(-1, -2)).float()[0] * d**-0.5  # [H, q, k]
        if causal:
            logits = logits.masked_fill(kidx[None, None, :] > queries[None, :, None], float("-inf"))
            return torch.softmax(logits, -1)[:, :, keys]
        return torch.softmax(logits, -1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


@dataclass
class OnevisionAdapter(LlavaAdapter):
    """LLaVA-OneVision in base-view mode: one 384x384 view per image (27x27 SigLIP tokens) and the learned
    newline token after it, as OneVision encodes each image of a multi-image or video input. (Its single-image
    "anyres" mode adds high-resolution crops of varying layout; the app does not use them.)"""

    model_type = "llava_onevision"
    suffix_tokens = 1

    def frame_suffix(self) -> torch.Tensor:
        return self.model.model.image_newline[None]


ADAPTERS = {cls.model_type: cls for cls in (LlavaAdapter, OnevisionAdapter)}


def adapter_for(model: torch.nn.Module, processor: object) -> LlavaAdapter:
    kind = getattr(model.config, "model_type", "?")
    if kind not in ADAPTERS:
        raise UnsupportedModel(f"model type {kind!r} is not supported (supported: {', '.join(ADAPTERS)})")
    return ADAPTERS[kind](model, processor)

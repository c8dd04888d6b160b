"""The built-in model with two vision encoders (`builtin-2enc`): the CLIP-style tower plus a small convolutional one.

METEOR's bases (EAGLE, Cambrian) feed an LLM from several encoders of different kinds. Ours adds to the built-in
model's CLIP tower (ViT, 16 px patches at 128 px, 8x8 tokens + CLS) a ConvNeXt-style encoder that sees the image at
96 px and patchifies it by strided convolutions (4 px stem, two 2x downsamplings: one token per 16 px of the 96 px
image, 6x6 tokens, no CLS, no attention). Each encoder has its own LLaVA projector.

Fusion: sequence-append. Each image's visual tokens are CLIP's 64 then the conv encoder's 36, one placeholder each
(100 per image). EAGLE concatenates channels and Cambrian aggregates spatially; both merge the encoders into one
token per cell, so no method could prune one encoder's token and keep the other's. Appending keeps every token
attributable to one encoder (METEOR's stages 1-2 prune per encoder and across encoders) at the cost of a longer
prompt. The conv encoder's output width equals CLIP's, so one token list [n, Dv] carries both encoders' states and
the slot of a token (0..63 CLIP, 64..99 conv) says which projector it takes.

Registered locally with transformers' Auto classes (model type `llava_2enc`): `AutoModelForImageTextToText
.from_pretrained(folder)` loads it with no `trust_remote_code`. The processor is the stock `LlavaProcessor` with
`num_additional_image_tokens = 1 + 36` (its CLS slot plus the conv tokens), so `<image>` expands to 100 placeholders.
`encoder_ranks` (config) holds each encoder's feature rank measured on calibration images (`measure_ranks`), which
METEOR's stage 1 turns into per-encoder budgets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, LlavaConfig, LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaModel, LlavaMultiModalProjector, LlavaPreTrainedModel

MODEL_TYPE = "llava_2enc"
RANK_TOL = 0.01  # numerical rank: singular values above 1% of the largest count


@dataclass
class ConvSpec:
    """The convolutional encoder's shape (stored in the model config as a dict)."""

    image_size: int = 96  # input side (px): the processor's 128 px image resampled
    stem: int = 4  # stem patch (px): a stride-4 convolution
    widths: tuple[int, ...] = (32, 64, 128)  # channels per stage; each later stage halves the grid
    kernel: int = 7  # depthwise kernel of each block (ConvNeXt's)

    @property
    def side(self) -> int:
        """Output grid side: 96 / (4 * 2 * 2) = 6."""
        return self.image_size // (self.stem * 2 ** (len(self.widths) - 1))

    @property
    def segments(self) -> int:
        return len(self.widths)


class ConvBlock(nn.Module):
    """ConvNeXt block: depthwise conv, channel LayerNorm, 4x pointwise MLP, residual. x: [F, C, h, w]."""

    def __init__(self, c: int, kernel: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, kernel, padding=kernel // 2, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        return x + self.pw2(F.gelu(self.pw1(y))).permute(0, 3, 1, 2)


class ConvEncoder(nn.Module):
    """Stem, then per stage (a 2x downsampling for every stage after the first and) one ConvBlock.

    forward(pixel_values [F, 3, H, W]) -> per-stage outputs [F, C_s, h_s, w_s]; the last, flattened to
    [F, side * side, C], is what the projector reads.
    """

    def __init__(self, spec: ConvSpec):
        super().__init__()
        self.spec = spec
        w = spec.widths
        self.stem = nn.Conv2d(3, w[0], spec.stem, stride=spec.stem)
        self.down = nn.ModuleList(nn.Conv2d(a, b, 2, stride=2) for a, b in zip(w[:-1], w[1:]))
        self.blocks = nn.ModuleList(ConvBlock(c, spec.kernel) for c in w)
        self.out_norm = nn.LayerNorm(w[-1])

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        s = self.spec.image_size
        x = F.interpolate(pixel_values, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        x = self.blocks[0](self.stem(x))
        states = [x]
        for down, block in zip(self.down, self.blocks[1:]):
            x = block(down(x))
            states.append(x)
        return states

    def tokens(self, last: torch.Tensor) -> torch.Tensor:
        """Last stage [F, C, side, side] -> tokens [F, side * side, C] (raster order), normed."""
        return self.out_norm(last.flatten(2).transpose(1, 2))


@strict
class TwoEncoderConfig(LlavaConfig):
    model_type = MODEL_TYPE

    conv_config: dict | None = None  # ConvSpec fields
    encoder_ranks: list[float] | None = None  # [CLIP, conv] feature ranks on calibration images (measure_ranks)
    rank_note: str = ""  # how encoder_ranks were measured

    def conv_spec(self) -> ConvSpec:
        d = dict(self.conv_config or {})
        if "widths" in d:
            d["widths"] = tuple(d["widths"])
        return ConvSpec(**d)


class TwoEncoderModel(LlavaModel):
    """LlavaModel + `conv_tower` and its `conv_projector`; image features are CLIP's then the conv tokens."""

    config_class = TwoEncoderConfig

    def __init__(self, config: TwoEncoderConfig):
        super().__init__(config)
        spec = config.conv_spec()
        if spec.widths[-1] != config.vision_config.hidden_size:
            raise ValueError("the conv encoder's last width must equal the CLIP tower's (one token list carries both)")
        self.conv_tower = ConvEncoder(spec)
        self.conv_projector = LlavaMultiModalProjector(config)

    def conv_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[F, 3, H, W] -> conv tokens before the projector [F, side * side, Dv]."""
        return self.conv_tower.tokens(self.conv_tower(pixel_values.to(self.conv_tower.stem.weight.dtype))[-1])

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs):
        out = super().get_image_features(pixel_values=pixel_values, **kwargs)
        conv = self.conv_projector(self.conv_features(pixel_values))  # [F, 36, D]
        out.pooler_output = [torch.cat([a, b.to(a.dtype)]) for a, b in zip(out.pooler_output, conv)]
        return out


class TwoEncoderForConditionalGeneration(LlavaForConditionalGeneration):
    config_class = TwoEncoderConfig

    def __init__(self, config: TwoEncoderConfig):
        LlavaPreTrainedModel.__init__(self, config)
        self.model = TwoEncoderModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


AutoConfig.register(MODEL_TYPE, TwoEncoderConfig, exist_ok=True)
AutoModelForImageTextToText.register(TwoEncoderConfig, TwoEncoderForConditionalGeneration, exist_ok=True)


def config_from(base: LlavaConfig, spec: ConvSpec | None = None) -> TwoEncoderConfig:
    """A two-encoder config around a one-encoder built-in config (same tower, projector and LLM)."""
    spec = spec or ConvSpec(widths=(32, 64, base.vision_config.hidden_size))
    d = base.to_dict()
    for k in ("model_type", "architectures", "transformers_version"):
        d.pop(k, None)
    n_clip = (base.vision_config.image_size // base.vision_config.patch_size) ** 2
    d["image_seq_length"] = n_clip + spec.side ** 2
    cfg = TwoEncoderConfig(**d, conv_config={**asdict(spec), "widths": list(spec.widths)})
    cfg._attn_implementation = "sdpa"
    return cfg


def from_base(base: LlavaForConditionalGeneration, seed: int = 0) -> TwoEncoderForConditionalGeneration:
    """A two-encoder model holding `base`'s tower, projector, LLM and head; the conv encoder and its projector
    start fresh (seeded)."""
    torch.manual_seed(seed)
    model = TwoEncoderForConditionalGeneration(config_from(base.config)).to(base.dtype)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    if unexpected or not all(k.startswith(("model.conv_tower", "model.conv_projector")) for k in missing):
        raise ValueError(f"{type(base).__name__} is not a one-encoder built-in model: unexpected {unexpected[:3]}, "
                         f"missing {[k for k in missing if 'conv_' not in k][:3]}")
    model.generation_config = base.generation_config
    return model.eval()


def two_encoder_processor(processor, config: TwoEncoderConfig):
    """The one-encoder LLaVA processor with `<image>` expanded to CLIP's tokens plus the conv tokens."""
    processor.num_additional_image_tokens = 1 + config.conv_spec().side ** 2
    return processor


@torch.no_grad()
def encoder_features(model: TwoEncoderForConditionalGeneration, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """Each encoder's tokens as the projectors read them: [CLIP [F, 64, Dv], conv [F, 36, Dv]]."""
    m = model.model
    hs = m.vision_tower(pixel_values, output_hidden_states=True).hidden_states[model.config.vision_feature_layer]
    return [hs[:, 1:], m.conv_features(pixel_values)]


def feature_rank(x: torch.Tensor, tol: float = RANK_TOL) -> int:
    """Numerical rank of one feature map [N, D]: singular values above `tol` x the largest."""
    s = torch.linalg.svdvals(x.float())
    return int((s > tol * s[0]).sum())


def measure_ranks(model: TwoEncoderForConditionalGeneration, pixel_values: torch.Tensor) -> list[float]:
    """Mean feature rank of each encoder over calibration images [F, 3, H, W]; stored in the config so METEOR's
    stage-1 budgets follow k_b^l = k_b r^l / sum r."""
    feats = encoder_features(model, pixel_values)
    return [round(sum(feature_rank(f) for f in enc) / len(enc), 2) for enc in feats]

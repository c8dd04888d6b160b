"""Inputs for LLaVA-OneVision in base-view mode, without torchvision.

transformers' `LlavaOnevisionProcessor` cannot be built where torchvision is absent (it type-checks its video
processor against a class that only exists with torchvision), and it expands each image into "anyres" crops.
The app runs OneVision the way it encodes each image of a multi-image or video input: one view of the whole
image at the tower's resolution (27x27 = 729 SigLIP tokens at 384 px) followed by the learned newline token.
This shim builds exactly those inputs from the checkpoint's own image processor, tokenizer and chat template.
"""

from __future__ import annotations

from pathlib import Path

import torch


class BaseViewProcessor:
    def __init__(self, image_processor, tokenizer, chat_template: str, tokens_per_image: int,
                 image_token: str = "<image>"):
        self.image_processor, self.tokenizer = image_processor, tokenizer
        self.chat_template, self.image_token = chat_template, image_token
        self.tokens_per_image = tokens_per_image  # patches + the newline

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def __call__(self, images: list, text: str, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        pv = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        if pv.dim() == 5:  # [F, views, 3, H, W]: view 0 is the whole image resized to the tower's input
            pv = pv[:, 0]
        text = text.replace(self.image_token, self.image_token * self.tokens_per_image)
        enc = self.tokenizer(text, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "pixel_values": pv}


def _chat_template(src: str, tokenizer) -> str:
    """The processor's chat template (it knows image content items), else the tokenizer's."""
    for name in ("chat_template.jinja", "chat_template.json"):
        path = Path(src) / name
        if not path.is_file():
            try:
                from huggingface_hub import hf_hub_download

                path = Path(hf_hub_download(src, name))
            except Exception:
                continue
        text = path.read_text()
        if name.endswith(".json"):
            import json

            text = json.loads(text)["chat_template"]
        return text
    if tokenizer.chat_template:
        return tokenizer.chat_template
    raise ValueError(f"no chat template found for {src}")


def load_processor(src: str, config, trust_remote_code: bool = False) -> BaseViewProcessor:
    from transformers import AutoImageProcessor, AutoTokenizer

    ip = AutoImageProcessor.from_pretrained(src, trust_remote_code=trust_remote_code)
    tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    side = config.vision_config.image_size // config.vision_config.patch_size
    image_token = tok.convert_ids_to_tokens(int(config.image_token_id))
    return BaseViewProcessor(ip, tok, _chat_template(src, tok), side * side + 1, image_token)

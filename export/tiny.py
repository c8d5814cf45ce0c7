"""Offline CLIP builders: a tiny random CLIP for tests and the demo, a full-size ViT-B/32-shaped one for benchmarks.

Each writes a folder that `ctmwa-export encoders --from DIR` loads like a hub snapshot: the model
(config.json + safetensors), a fast tokenizer (tokenizer.json + tokenizer_config.json, a WordLevel model built
with `tokenizers`) and the image processor config (preprocessor_config.json, CLIPImageProcessorPil). Nothing is
downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

# A small English vocabulary, enough for readable demo posts; every other word maps to [UNK].
WORDS = tuple(
    """
    a an the this that these those i you he she it we they me my your our their is are was were be been am
    not no yes very so too really just more most less all some any every of in on at to for with from by about
    and or but if then than because when while what who how why where which there here now today tonight
    good great happy love loved lovely nice best amazing awesome beautiful fun glad wonderful excellent perfect
    bad sad angry hate hated awful terrible worst ugly boring tired afraid fear scared calm quiet bored upset
    cat dog photo picture day night morning sun rain snow sky sea beach city street car train food coffee
    cake pizza friend friends family home work school game team music song movie book party trip holiday
    new old big small hot cold long short first last little many much few other same own right wrong
    see look like want need feel think know go going went come make made take get got give say said
    ok okay wow lol omg thanks thank please sorry well still again never always ever
    """.split()
)
# Punctuation and emoji get their own tokens, as a real tokenizer would give them some.
SYMBOLS = tuple("! ? . , : ; ' \" ( ) - # @ 😀 😢 😡 ❤️ 👍 👎".split())

UNK, PAD, BOS, EOS = "[UNK]", "[PAD]", "<|startoftext|>", "<|endoftext|>"


def _tokenizer(vocab_words: list[str], max_length: int, legacy_eos: bool) -> tuple[PreTrainedTokenizerFast, dict[str, int]]:
    """WordLevel tokenizer. legacy_eos lays ids out as openai/clip-vit-base-patch32 does: EOS is the largest id and
    doubles as padding (the model then pools the argmax of input_ids); else PAD=0, UNK=1, BOS=2, EOS=3."""
    if legacy_eos:
        tokens = [UNK, *vocab_words, BOS, EOS]
    else:
        tokens = [PAD, UNK, BOS, EOS, *vocab_words]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    pad = EOS if legacy_eos else PAD
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK, pad_token=pad, bos_token=BOS, eos_token=EOS, model_max_length=max_length
    )
    ids = {"vocab_size": len(vocab), "pad": vocab[pad], "bos": vocab[BOS], "eos": vocab[EOS]}
    return fast, ids


def _build_clip(
    out_dir: str | Path,
    *,
    seed: int,
    text: dict,
    vision: dict,
    projection_dim: int,
    vocab_words: list[str],
    legacy_eos: bool,
) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    max_length = text.get("max_position_embeddings", 77)
    tokenizer, ids = _tokenizer(vocab_words, max_length, legacy_eos)
    text_config = {
        **text,
        "vocab_size": ids["vocab_size"],
        "pad_token_id": ids["pad"],
        "bos_token_id": ids["bos"],
        # eos_token_id == 2 is transformers' marker for the original (argmax) pooling of openai's configs
        "eos_token_id": 2 if legacy_eos else ids["eos"],
    }
    config = CLIPConfig(text_config=text_config, vision_config=vision, projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    size = vision["image_size"]
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(out_dir)
    logger.info("built random CLIP (seed %d, %.1fM parameters) in %s", seed, sum(p.numel() for p in model.parameters()) / 1e6, out_dir)
    return out_dir


def build_tiny_clip(
    out_dir: str | Path,
    seed: int = 0,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    projection_dim: int = 16,
    max_text_length: int = 16,
    legacy_eos: bool = False,
) -> Path:
    """A tiny random CLIP (hidden 32, 2 layers, 32x32 images, patch 8) + WordLevel tokenizer, saved to out_dir."""
    common = {"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_hidden_layers": num_layers, "num_attention_heads": 4}
    return _build_clip(
        out_dir,
        seed=seed,
        text={**common, "max_position_embeddings": max_text_length},
        vision={**common, "image_size": image_size, "patch_size": patch_size},
        projection_dim=projection_dim,
        vocab_words=[*WORDS, *SYMBOLS],
        legacy_eos=legacy_eos,
    )


def build_random_clip_vit_b32(out_dir: str | Path, seed: int = 0) -> Path:
    """CLIP with openai/clip-vit-base-patch32's shapes (151M parameters, 224 px, 77 tokens, 49,408-token vocabulary)
    and random weights: for speed benchmarks, without a download. Token ids follow openai's legacy layout."""
    filler = [f"w{i:05d}" for i in range(49408 - 2 - 1 - len(WORDS) - len(SYMBOLS))]
    return _build_clip(
        out_dir,
        seed=seed,
        text={"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77},
        vision={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 224, "patch_size": 32},
        projection_dim=512,
        vocab_words=[*WORDS, *SYMBOLS, *filler],
        legacy_eos=True,
    )

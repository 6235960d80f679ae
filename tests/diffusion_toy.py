"""Toy ingredients for the diffusion zoo tests: a tiny randomly initialised SD-1.x pipeline and CLIP model,
built from configs and saved as ordinary diffusers / transformers folders (no hub, no files of ours)."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def write_char_clip_tokenizer(folder: Path) -> int:
    """vocab.json + merges.txt of a character-level CLIP BPE (no merges); returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(i) for i in range(33, 127)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return len(vocab)


def save_tiny_sd(folder: Path, clip_folder: Path, seed: int = 0) -> None:
    """A tiny SD-1.x pipeline (UNet with SD block types and module names, VAE, CLIP text encoder and
    tokenizer, DDIM) for 16×16 images, and a tiny CLIPModel + CLIPProcessor scoring 16×16 images."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig,
                              CLIPTextModel, CLIPTokenizer, CLIPVisionConfig)

    n = write_char_clip_tokenizer(folder / "_tok")
    tok = CLIPTokenizer(str(folder / "_tok/vocab.json"), str(folder / "_tok/merges.txt"), model_max_length=24)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), latent_channels=4,
                        norm_num_groups=32, sample_size=16)
    tcfg = CLIPTextConfig(vocab_size=n, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=24, bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1,
                          projection_dim=32)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=CLIPTextModel(tcfg), tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                            image_size=16, patch_size=8, projection_dim=32)
    CLIPModel(CLIPConfig(text_config=tcfg.to_dict(), vision_config=vcfg.to_dict(), projection_dim=32)).save_pretrained(clip_folder)
    proc = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    CLIPProcessor(image_processor=proc, tokenizer=tok).save_pretrained(clip_folder)


def toy_diffusion_recipe(pipe: Path, clip: Path, **over) -> dict:
    d = {
        "name": "toy-sd", "seed": 3, "n_loras": 6, "group_size": 3,
        "base": {"kind": "diffusers", "path": str(pipe), "name": "tiny-sd"},
        "lora": {"target_modules": ["to_q", "to_k", "to_v", "to_out.0"], "rank": {"choice": [2, 4]}, "alpha": "1r"},
        "hparams": {"lr": {"loguniform": [1e-3, 1e-2]}, "steps": {"int_uniform": [2, 4]},
                    "batch_size": {"choice": [1, 2]}, "weight_decay": {"choice": [0.0, 0.01]}},
        "data": {"source": "shapes", "dataset_size": {"int_uniform": [2, 5]},
                 "templates": ["a {style} {cls}", "a photo of a {cls}"]},
        "labels": {"clip_model": str(clip), "prompts": ["a red circle", "a blue square"], "seeds": [0],
                   "steps": 2, "guidance_scale": 5.0, "batch": 4},
    }
    d.update(over)
    return d


def save_tiny_bert(folder: Path, hidden: int = 32, seed: int = 0) -> Path:
    """A tiny randomly initialised BERT (1 layer) with a lowercase character WordPiece vocabulary, as a
    transformers folder (model + tokenizer): the pixel base's text encoder in tests (MiniLM-L6 in production)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(i) for i in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars), "/", "-"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_clip(folder: Path, image_size: int = 16) -> Path:
    """A tiny randomly initialised CLIPModel + CLIPProcessor (character tokenizer) scoring small images."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig,
                              CLIPTokenizer, CLIPVisionConfig)

    n = write_char_clip_tokenizer(folder / "_tok")
    tok = CLIPTokenizer(str(folder / "_tok/vocab.json"), str(folder / "_tok/merges.txt"), model_max_length=24)
    torch.manual_seed(0)
    tcfg = CLIPTextConfig(vocab_size=n, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=24, bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1,
                          projection_dim=32)
    vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                            image_size=image_size, patch_size=8, projection_dim=32)
    CLIPModel(CLIPConfig(text_config=tcfg.to_dict(), vision_config=vcfg.to_dict(), projection_dim=32)).save_pretrained(folder)
    proc = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=proc, tokenizer=tok).save_pretrained(folder)
    return folder


TINY_PIXEL_UNET = {"sample_size": 16, "block_out_channels": [32, 32], "layers_per_block": 1,
                   "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                   "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "attention_head_dim": 8, "norm_num_groups": 32}


def write_idx(path: Path, arr, gz: bool) -> None:
    """An IDX file of unsigned bytes, byte by byte (magic 0 0 8 ndim, big-endian uint32 sizes, data)."""
    import gzip
    import struct

    raw = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.astype("uint8").tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def write_tiny_fashion_mnist(folder: Path, per_class: int = 3, seed: int = 7):
    """Random 28×28 images, `per_class` of each of the 10 labels (shuffled): images gzipped, labels plain."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(10 * per_class, 28, 28), dtype=np.uint8)
    labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
    write_idx(folder / "train-images-idx3-ubyte.gz", images, gz=True)
    write_idx(folder / "train-labels-idx1-ubyte", labels, gz=False)
    return images, labels

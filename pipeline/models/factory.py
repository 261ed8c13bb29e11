"""Create a timm ViT with TokenGate's layers injected, after checking that the architecture is one we can gate."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import Attention, Mlp
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn

from pipeline.config import ModelConfig
from pipeline.errors import fail
from pipeline.models.layers import GatedAttention, GatedBlock, GatedMlp


def timm_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """The constructor overrides a config asks timm for (None = keep the architecture's own value)."""
    kwargs: dict[str, Any] = dict(img_size=cfg.img_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes)
    for name in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio"):
        if getattr(cfg, name) is not None:
            kwargs[name] = getattr(cfg, name)
    return kwargs


def check_architecture(cfg: ModelConfig) -> None:
    """Refuse, with the reason, any architecture whose token pruning would be wrong or silently different."""
    if not timm.is_model(cfg.arch):
        close = difflib.get_close_matches(cfg.arch, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models('vit_*') or 'deit_*'"
        raise fail(f"unknown timm model {cfg.arch!r}", hint)
    try:
        with torch.device("meta"):
            probe = timm.create_model(cfg.arch, pretrained=False, **timm_kwargs(cfg))
    except (AssertionError, TypeError, ValueError, RuntimeError) as exc:
        raise fail(f"timm cannot build {cfg.arch} with {timm_kwargs(cfg)} ({exc})",
                   "check model.img_size / patch_size / embed_dim / num_heads against the architecture") from None
    if not isinstance(probe, VisionTransformer):
        raise fail(f"{cfg.arch} is a {type(probe).__name__}, not a timm VisionTransformer",
                   "pick a deit_* or vit_*_patch* model")
    if not probe.has_class_token:
        raise fail(f"{cfg.arch} has no class token, which token scores are computed from",
                   "pick a model with a class token (deit_*, vit_*_patch16_224, ...)")
    if probe.global_pool != "token" or probe.attn_pool is not None:
        raise fail(f"{cfg.arch} pools with global_pool={probe.global_pool!r}, which averages over tokens that pruning removes",
                   "pick a model with global_pool='token'")
    image = probe.patch_embed.img_size
    patch = probe.patch_embed.patch_size
    if image[0] % patch[0] or image[1] % patch[1]:
        raise fail(f"image size {image} is not divisible by patch size {patch}",
                   "pick model.img_size as a multiple of the patch size")
    block = probe.blocks[0]
    if type(block) is not Block or type(block.attn) is not Attention or type(block.mlp) is not Mlp:
        raise fail(f"{cfg.arch} uses {type(block).__name__}/{type(block.attn).__name__}/{type(block.mlp).__name__}",
                   "TokenGate gates timm's standard pre-norm Block with Attention and Mlp; pick a deit_*/vit_* model")
    if not isinstance(block.attn.norm, torch.nn.Identity) or block.attn.gate is not None \
            or not isinstance(block.mlp.norm, torch.nn.Identity):
        raise fail(f"{cfg.arch} normalises or gates across heads/channels, so heads cannot be pruned independently",
                   "pick a model without scale_attn_norm / scale_mlp_norm / gated attention")


def create_vit(cfg: ModelConfig) -> VisionTransformer:
    """Build the timm model with gated layers, loading `cfg.checkpoint` or timm's pretrained weights if asked."""
    check_architecture(cfg)
    kwargs = dict(timm_kwargs(cfg), block_fn=GatedBlock, attn_layer=GatedAttention, mlp_layer=GatedMlp)
    try:
        vit = timm.create_model(cfg.arch, pretrained=cfg.pretrained, **kwargs)
    except (OSError, RuntimeError) as exc:
        if not cfg.pretrained:
            raise
        raise fail(f"could not fetch timm's pretrained weights for {cfg.arch} ({type(exc).__name__})",
                   "this needs the Hugging Face hub; offline, download once and pass model.checkpoint=PATH") from None
    if cfg.checkpoint:
        load_dense_checkpoint(vit, cfg.checkpoint)
    return vit


def load_dense_checkpoint(vit: VisionTransformer, path: str | Path) -> None:
    """Load a timm-format state_dict (.safetensors, .pth, .pt, .bin), resizing patch/position embeddings if needed."""
    from pipeline.checkpoints import read_state_dict

    state = read_state_dict(path)
    state = state.get("model", state) if isinstance(state.get("model"), dict) else state
    try:
        state = checkpoint_filter_fn(state, vit)
    except Exception as exc:  # timm's filter touches arbitrary keys; any failure means the file is not a ViT of ours
        raise fail(f"checkpoint {path} does not fit {type(vit).__name__} ({type(exc).__name__}: {exc})",
                   "pass a checkpoint of the same architecture (model.arch) and geometry") from None
    missing, unexpected = _load(vit, state, path)
    if missing or unexpected:
        raise fail(f"checkpoint {path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}",
                   "pass a checkpoint of the same architecture, or fix model.arch / embed_dim / depth / num_classes")


def _load(module: torch.nn.Module, state: dict, path: str | Path) -> tuple[list[str], list[str]]:
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise fail(f"checkpoint {path} has tensors of the wrong shape ({first.strip()})",
                   "pass a checkpoint of the same architecture and geometry (model.* in the config)") from None
    return list(result.missing_keys), list(result.unexpected_keys)

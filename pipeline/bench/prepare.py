"""The four bench models ready to run: built (`variants`), thresholds fitted where none were trained (`keep`), and
described in words for the report. `tokengate visualize` uses the same models."""
from __future__ import annotations

import sys

import torch

from pipeline.bench import keep, variants
from pipeline.bench.target import Target
from pipeline.models import GatedViT


def log(message: str, show: bool = True) -> None:
    if show:
        print(f"bench: {message}", file=sys.stderr, flush=True)


def prepare_models(target: Target, inputs: torch.Tensor,
                   show: bool = True) -> tuple[dict[str, GatedViT], dict[str, dict]]:
    """The four models with every threshold set (trained, or fitted here), and how each was made."""
    models = variants.build_variants(target)
    about = _calibrate(target, models, inputs, show)
    return models, {name: about[name] for name in variants.MODELS}


def _calibrate(target: Target, models: dict[str, GatedViT], inputs: torch.Tensor, show: bool) -> dict[str, dict]:
    """Fit the thresholds that are not trained; describe how every model was made."""
    geom = models["dense"].geometry()
    prefix, patches = geom.num_prefix, geom.num_patches
    about: dict[str, dict] = {}
    if target.run_dir is not None:
        student_kept = keep.kept_tokens(models["combined"], inputs)
        ratios = keep.keep_ratios_of(student_kept, prefix, patches)
        about["dense"] = {"how": f"the run's teacher ({target.run_dir}/teacher.safetensors)"}
        about["static"] = {"how": "the run's sliced student with its token stages removed (every token kept)",
                           "structure": models["static"].structure().to_dict()}
        about["combined"] = {"how": "the run's student (trained thresholds, sliced structure)",
                             "thresholds": models["combined"].thresholds.detach().tolist(), "keep_ratios": ratios}
        if not models["combined"].stages:
            from pipeline.errors import fail

            raise fail(f"the student of {target.run_dir} has no token stages, so there is no token-gated model to "
                       "bench", "bench a run trained with token stages (gates.token_stages null or a list)")
        fitted = keep.fit_keep_ratios(models["tokens"], inputs, ratios)
        about["tokens"] = {"how": "the teacher's weights with thresholds fitted without training so that its mean "
                                  "keep ratio per stage matches the student's on the same images",
                           "thresholds": models["tokens"].thresholds.detach().tolist(),
                           "keep_ratios": keep.keep_ratios_of(fitted, prefix, patches)}
        log(f"tokens model: keep ratios {', '.join(f'{r:.3f}' for r in ratios)} (the student's)", show)
        return about
    spec = target.spec
    weights = "random weights (seed %d)" % spec.seed if target.random_weights else "the config's checkpoint"
    about["dense"] = {"how": f"{target.cfg.model.arch}, {weights}"}
    structure = models["static"].structure()
    about["static"] = {"how": f"dense with {spec.heads_fraction:.0%} of heads and {spec.mlp_fraction:.0%} of MLP "
                              f"channels kept ({sum(structure.heads)} heads, MLP {structure.mlp_hidden[0]} wide), "
                              "every token kept", "structure": structure.to_dict()}
    for name, base in (("tokens", "dense"), ("combined", "static")):
        fitted = keep.fit_keep_ratios(models[name], inputs, spec.keep_ratios)
        about[name] = {"how": f"{base} with token thresholds before blocks {list(models[name].stages)}, fitted without "
                              f"training on the bench images to keep ratios {list(spec.keep_ratios)}",
                       "thresholds": models[name].thresholds.detach().tolist(),
                       "keep_ratios": keep.keep_ratios_of(fitted, prefix, patches)}
    log(f"thresholds fitted to keep ratios {list(spec.keep_ratios)}", show)
    return about

"""The gated ViT: pure token algorithms (token_ops), timm glue (layers, factory), the wrapper (gated_vit), the packed
layout (packed, varlen_op) and the stage-by-stage forward (staged)."""
from pipeline.models.build import build_student, build_teacher, load_student, load_teacher, save_student, save_teacher
from pipeline.models.gated_vit import GatedViT, Structure, default_stages

__all__ = [
    "GatedViT", "Structure", "build_student", "build_teacher", "default_stages", "load_student", "load_teacher",
    "save_student", "save_teacher",
]

"""Whole backbones (ViT, Swin-like, CSWin-like) whose every attention layer
comes from the attention registry: the plan (``plan.py``) and the modules
(``backbone.py``)."""
from .backbone import (
    Backbone, Block, IdentityMixer, TokenStem, ValueOnly, blocks_of, build_model, count_params, exact_twin,
    model_info, replace_attention,
)
from .plan import (
    BlockPlan, ModelPlan, StagePlan, check_model_config, check_plan, plan_model, stride_of, structural_reason,
    valid_resolutions,
)

__all__ = ["Backbone", "Block", "BlockPlan", "IdentityMixer", "ModelPlan", "StagePlan", "TokenStem", "ValueOnly",
           "blocks_of", "build_model", "check_model_config", "check_plan", "count_params", "exact_twin",
           "model_info", "plan_model", "replace_attention", "stride_of", "structural_reason",
           "valid_resolutions"]

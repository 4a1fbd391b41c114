"""PixelLLM components, one module each (see DESIGN.md section 1)."""

from pixelkit.modeling.image_encoder import ImageEncoder, SamBackbone, TimmBackbone, build_backbone
from pixelkit.modeling.language_model import LanguageModel, load_language_model
from pixelkit.modeling.location import LocationCodec
from pixelkit.modeling.pixel_llm import PixelLLM, PixelLLMOutput
from pixelkit.modeling.point_head import PointHead
from pixelkit.modeling.prompt_encoder import PromptEncoder, pack_prompts
from pixelkit.modeling.prompt_feature_extractor import PromptFeatureExtractor
from pixelkit.modeling.proposal_head import ProposalHead, SimpleFeaturePyramid
from pixelkit.modeling.trainable import format_summary, parameter_summary, set_trainable

__all__ = [
    "ImageEncoder", "SamBackbone", "TimmBackbone", "build_backbone", "LanguageModel",
    "load_language_model", "LocationCodec", "PixelLLM", "PixelLLMOutput", "PointHead",
    "PromptEncoder", "pack_prompts", "PromptFeatureExtractor", "ProposalHead",
    "SimpleFeaturePyramid", "format_summary", "parameter_summary", "set_trainable",
]

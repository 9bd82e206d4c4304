"""Feature encoders: text (local transformers), image (torchvision), the aligners'
surface and bag features, the SIMULATED visual modality of setting R2, and
:func:`build_feature_set` for the benchmark settings R1/R2.

Heavy dependencies (transformers, torchvision, PIL, pyarrow) are imported only
when an encoder needs them.
"""
from __future__ import annotations

from ._util import default_cache_dir, uri_to_text
from .build import (NO_TEXT, SETTINGS, build_feature_set, entity_names, load_feature_set, require_seed_slots,
                    save_feature_set)
from .image import ImageEncoder, build_backbone, fill_missing, images_in_folder
from .simulated import SimulatedVisual, SimulationConfig, simulate_visual
from .surface import (GloveVectors, attribute_bags, char_bigram_features, char_bigram_vocab, glove_name_features,
                      load_glove, relation_bags, tokenize)
from .text import TextEncoder, attribute_texts, default_text_model, relation_texts

__all__ = [
    "NO_TEXT", "SETTINGS", "GloveVectors", "ImageEncoder", "SimulatedVisual", "SimulationConfig", "TextEncoder",
    "attribute_bags", "attribute_texts", "build_backbone", "build_feature_set", "char_bigram_features",
    "char_bigram_vocab", "default_cache_dir", "default_text_model", "entity_names", "fill_missing",
    "glove_name_features", "images_in_folder", "load_feature_set", "load_glove", "relation_bags",
    "relation_texts", "require_seed_slots", "save_feature_set", "simulate_visual", "tokenize", "uri_to_text",
]

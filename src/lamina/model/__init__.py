"""The Llama model: configuration, presets and the network. Imports nothing else of lamina."""

from .config import ModelConfig, RopeScaling, YarnScaling, count_params, llama_ffn_dim
from .kv_cache import KVCache
from .llama import Transformer, expected_shapes, first_mismatch, from_state_dict, init_weights, weights, without_mtp
from .presets import PRESETS, preset

__all__ = ["ModelConfig", "RopeScaling", "YarnScaling", "count_params", "llama_ffn_dim", "KVCache", "without_mtp",
           "Transformer", "expected_shapes", "first_mismatch", "from_state_dict", "init_weights", "weights", "PRESETS", "preset"]

"""Everything about files: the manifest, fetching and verifying, reading checkpoints, key adapters,
the deploy cache and the RepOptimizer scale files. Nothing here builds a model's layers."""
from .adapters import adapt_state_dict, detect_key_style, key_styles, register_key_adapter
from .checkpoint import load_checkpoint, read_state_dict, save_state_dict, unwrap_state_dict
from .cache import cache_entries, cache_path, cached_file, remove_cached
from .hub import Source, fetch, is_offline
from .files import cache_dir
from .manifest import load_manifest
from .pretrained import (deploy_cache_entries, download, load_pretrained_state_dict, pretrained_cfg,
                         remove_deploy_cached)
from .scales import extract_scales, load_scales, load_scales_into, released_scales, save_scales

__all__ = [
    "load_manifest",
    "Source",
    "fetch",
    "is_offline",
    "cache_dir",
    "cache_path",
    "cached_file",
    "cache_entries",
    "remove_cached",
    "read_state_dict",
    "unwrap_state_dict",
    "load_checkpoint",
    "save_state_dict",
    "register_key_adapter",
    "adapt_state_dict",
    "detect_key_style",
    "key_styles",
    "load_pretrained_state_dict",
    "download",
    "pretrained_cfg",
    "deploy_cache_entries",
    "remove_deploy_cached",
    "load_scales",
    "save_scales",
    "extract_scales",
    "released_scales",
    "load_scales_into",
]

"""Test-session settings: 8 simulated CPU devices (for sharding tests), no network for Hugging Face, and
XLA's persistent compilation cache and the project's per-user cache (the feature store) in directories of
this session (not the user's ~/.cache)."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # configs' compile_cache_dir default reads it
    _cache = tempfile.mkdtemp(prefix="smartvlm_jax_tests_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)
if "SMARTVLM_JAX_CACHE" not in os.environ:  # configs' feature_store default reads it (user_cache_dir)
    _user_cache = tempfile.mkdtemp(prefix="smartvlm_jax_tests_cache_")
    os.environ["SMARTVLM_JAX_CACHE"] = _user_cache
    atexit.register(shutil.rmtree, _user_cache, True)

"""Names the Triton model configs, the python-backend model and the client share.

Imports nothing: the python-backend model reads them inside Triton's stub, and the CLI without
loading a Triton client library."""

PROTOCOLS = ("http", "grpc")
CONFIG_PARAMETER = "onerank.config"  # the OneRank config as JSON: limits for clients and the python model
PRECISION_PARAMETER = "onerank.precision"
PLUGIN_PARAMETER = "onerank.plugin_library"  # path of the plugin relative to the build dir, for TensorRT models
THREADS_PARAMETER = "intra_op_threads"  # ONNX Runtime threads of the python-backend model
# build --user-cache: the python-backend model's two halves, in its version directory
USER_ENCODER_FILE = "user_encoder.onnx"
CANDIDATE_SCORER_FILE = "candidate_scorer.onnx"
# A GPU-target cached model calls the two halves as Triton models (serving/bls.py) named here, and
# keys its cache on this identity (the models' files are not in its own directory).
USER_ENCODER_MODEL_PARAMETER = "onerank.user_encoder_model"
CANDIDATE_SCORER_MODEL_PARAMETER = "onerank.candidate_scorer_model"
USER_CACHE_IDENTITY_PARAMETER = "onerank.user_cache_identity"
# Split mode (docs/embeddings.md): the lookup model's store, a path relative to its model directory or absolute
EMBEDDING_STORE_PARAMETER = "onerank.embedding_store"
EMBEDDING_VERIFY_PARAMETER = "onerank.embedding_verify"  # "yes": full sha256 check of the store at load
EMBEDDING_BACKEND_PARAMETER = "onerank.embedding_backend"  # mmap (default) | redis (embeddings/backends.py)
EMBEDDING_REDIS_URL_PARAMETER = "onerank.embedding_redis_url"
# The user-state cache on a GPU target: the TensorRT engines of its two halves, one model per precision,
# named <prefix>_trt_<precision> (onerank_user_encoder_trt_fp32), called by the BLS model that serves `onerank`.
USER_ENCODER_MODEL = "onerank_user_encoder"
CANDIDATE_SCORER_MODEL = "onerank_candidate_scorer"
ROLE_PARAMETER = "onerank.role"  # user_encoder / candidate_scorer: which half a model serves


def tensorrt_half_model(prefix: str, precision: str) -> str:
    """The Triton model name of one half's TensorRT engine (prefix: USER_ENCODER_MODEL / CANDIDATE_SCORER_MODEL)."""
    return f"{prefix}_trt_{precision}"

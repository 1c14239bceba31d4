"""onerank-export: OneRank from PyTorch to Triton (ONNX + custom op, FP16/INT8, TensorRT, parity)."""

__version__ = "0.1.0"

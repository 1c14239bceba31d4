"""Reduced precision decided in the ONNX (TensorRT 10/11 are strongly typed): INT8 with explicit
Q/DQ calibrated on representative requests, FP16 with fp32 islands; both judged against fp32
eager by ranking metrics on held-out requests. See docs/precision.md.

    data.py / data_files.py   requests from .npz, Parquet or the demo generator; validation, sampling
    selection.py              which nodes go low precision, which stay float, and why
    int8.py, histogram.py     ONNX Runtime calibration + QDQ quantization (+ fast entropy search)
    fp16.py                   activation-range check and the fp16 converter
    checks.py                 TensorRT / contract structure checks
    accuracy.py, localize.py  ranking metrics, gates, per-node INT8 error
    result.py                 the typed outcome of a run and its calibration.json entry
    report.py, pipeline.py    calibration.json / .png; one run end to end (`pipeline.calibrate`)
"""

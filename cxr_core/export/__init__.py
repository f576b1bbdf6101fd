"""ONNX export, int8 quantisation and an ONNX Runtime backend for the classifiers (docs/export.md).

    python -m cxr_core.export --model vbreathnet --int8            # weights/onnx/vbreathnet{,.int8}.onnx + cards
    python -m cxr_core.export.bench --models vbreathnet --out docs/export_bench.json

Modules (imported on use, so `import cxr_core.export` needs neither onnx nor onnxruntime):

* `to_onnx`   torch -> ONNX (legacy TorchScript exporter, deterministic, no onnxscript), onnx.checker,
              output comparison with PyTorch on real test films, the JSON card beside each file;
* `quantise`  int8 static quantisation with onnxruntime.quantization, calibrated on the cxr3
              validation split only (the test split is refused);
* `backend`   `load(name, backend="torch"|"onnx"|"onnx-int8")`: a classifier object that runs
              through `classify.predict` / `pipeline.analyse` unchanged (ONNX Runtime answers the
              forward pass; heatmaps are computed by the PyTorch twin);
* `detector`  ultralytics' own ONNX export of the YOLO detector with a box check against the .pt;
* `bench`     size, peak RSS, latency, throughput and accuracy per backend, as ratios to PyTorch.
"""

BACKENDS: tuple[str, ...] = ("torch", "onnx", "onnx-int8")

"""Deployment backends: the models of models/ exported to ONNX and run by ONNX Runtime, TensorRT and CuPy.

- `deploy.guards`: every optional backend guarded once (onnx, onnxruntime and its execution providers,
  TensorRT, CuPy); a missing one is a reason string, which the suites turn into a `skipped` row.
- `deploy.export`: `torch.onnx.export` (the dynamo exporter) of the byte-level Llama (a graph without cache
  and a graph with the KV cache as inputs and outputs) and of the digits MLP, validated by `onnx.checker`,
  cached under `.cache/onnx/` by a hash of the weights, the config and the exporter's versions.
- `deploy.ort`: ONNX Runtime sessions (CPU, CUDA and TensorRT execution providers, I/O binding on GPUs).
- `deploy.ort_quant`: ONNX Runtime int8 quantization (dynamic, and static with calibration text).
- `deploy.tensorrt`: TensorRT engines behind one small interface (fp16, int8 with calibration, fp8), cached
  by (model, GPU, TensorRT version, flags).
- `deploy.cupy_launch`: the project's kernels/cuda sources compiled at run time by NVRTC (cupy.RawModule).
- `deploy.variants`: the variants the model and digits suites register (one line each).
docs/backends.md says how they are used and what they measured.
"""

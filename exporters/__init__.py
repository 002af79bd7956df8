"""Exporters: one module per backend (eager, compile, onnx, trt), each writing an Artifact directory."""

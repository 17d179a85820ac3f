"""Model export: ONNX and TensorRT specs and builders (export issue)."""

"""The model: bundle layout and checks, the registry, preprocessing, posts decoding, ONNX Runtime sessions."""

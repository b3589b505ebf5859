"""The two scorers: an online River model and an offline-trained ONNX model, one vocabulary."""

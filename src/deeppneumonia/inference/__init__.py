"""Using a trained classifier: the predictor, batched and file prediction, Grad-CAM overlays, ONNX export."""

"""Reading an ONNX graph: the index of producers, consumers and constants (``index``), strict
shape inference (``shapes``), constant subgraphs under the model's opsets (``consteval``), and
onnx.reference with inference-mode BatchNormalization (``onnx_reference``)."""

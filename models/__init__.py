"""Small BatchNorm models trained on scikit-learn's digits; see models/README.md."""

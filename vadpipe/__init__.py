"""vadpipe: weakly-supervised video anomaly detection from raw videos to anomaly scores."""

__version__ = "0.1.0"

"""ctmwa-batch runtime: preprocessing, model bundles, ONNX Runtime sessions, scoring of Parquet partitions.

This package never imports torch, and only ctmwa_batch.airflow (the task groups and operators for Airflow DAGs)
imports airflow; a scoring worker installs it with one ONNX Runtime extra.
"""

__version__ = "0.1.0"

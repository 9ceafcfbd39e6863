"""Charts drawn without a plotting library (inline SVG), shared by the report and the retraining run."""

"""Training recipes (Lightning): HF-Net distillation from online teachers (``visloc train``)."""

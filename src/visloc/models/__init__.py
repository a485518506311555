"""Pure networks (``nn.Module`` only): backbones, heads and full models; no file or network access."""

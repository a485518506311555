"""The ``loftr-coarse`` recipe: depth ground truth, world-pairs data, losses, module and the recipe itself."""

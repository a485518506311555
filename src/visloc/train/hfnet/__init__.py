"""The ``hfnet-distill`` recipe: conf, teachers, losses, data, target cache, module and the recipe itself."""

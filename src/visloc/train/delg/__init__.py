"""DELF (two stages) and DELG (joint) training on a GLDv2 train folder: recipes ``delf`` and ``delg``."""

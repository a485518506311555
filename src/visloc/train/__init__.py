"""Training: one Lightning core (``core``), recipes (``recipe_base``), shared data (``datasets``), one package per recipe.

``visloc train CONFIG`` reads the YAML's ``recipe:`` key (``recipe_base.load_recipe_conf``) and
runs it through ``core.train``. Shipped recipes: ``hfnet`` (``hfnet-distill``).
"""

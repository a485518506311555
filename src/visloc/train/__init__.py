"""Training: one Lightning core (``core``), the recipe contract (``recipe_base``), shared data (``datasets``).

``visloc train CONFIG`` reads the YAML's ``recipe:`` key (``recipe_base.load_recipe_conf``) and
runs it through ``core.train``. One package per recipe: ``hfnet`` (``hfnet-distill``), ``loftr``
(``loftr-coarse``), ``delg`` (``delg``, ``delf``), ``event_vpr`` (``event-vpr``).
"""

"""Hierarchical localization: maps from known poses (triangulation) or SfM, and query localization.

``colmap`` bridges visloc's files and pycolmap (the +0.5 keypoint convention lives there),
``triangulation`` and ``sfm`` build the 3D model, ``covisibility`` groups images into places and
chooses pairs from poses, ``localize`` localizes one query (retrieve, cluster, match, 2D-3D, pose).
"""

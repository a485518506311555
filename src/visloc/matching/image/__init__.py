"""Image matchers (``MATCHERS`` kind ``image``): two images in, keypoints and matches out."""

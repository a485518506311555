"""Reading and writing: images, feature and match stores, pair lists."""

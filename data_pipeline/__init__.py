"""Data for lbdt-jax: numpy batches with the keys frame, frame_difference, words, word_mask, mask."""

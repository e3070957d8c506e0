"""From a case's images to its mask: preprocess, predict (one sliding-window pass, every fold on each
window), postprocess (every step from probability to mask on the PET grid), and the pipeline joining them."""

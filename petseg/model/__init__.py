"""Stage-independent description of a trained ensemble: the card's settings, its parser, the networks and
their weights, and the two small learned models a card may carry (tracer classifier, component filter)."""

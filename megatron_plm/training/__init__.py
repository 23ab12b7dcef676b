"""Training: model/optimizer construction, the step, and the runs built on them."""

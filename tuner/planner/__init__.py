"""`python -m tuner plan`: every layout of a model on a cluster, ranked by the performance model."""

"""The performance model: step time and memory of any layout on any cluster, from shapes."""

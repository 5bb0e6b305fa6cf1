"""Using a registered CTG model: ``fetal score-ctg`` and the risk over time of a growing record."""

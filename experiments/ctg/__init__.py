"""CTG network variants: crops, a multi-task pH head, masked-FHR pretraining, ensembles."""

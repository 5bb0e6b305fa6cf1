"""What FETAL_PLANES_DB and HC18 files must meet: the sources' listing, image and label checks."""

"""FIGO-style features of a CTG window."""

"""The brain-plane classifier: a fixed Gabor bank (or a small CNN) with a learned read-out."""

"""Research apart from the product: off-by-default variants and accuracy studies.

Documented in ``docs/experiments.md``. A module here may import ``stages`` (never the reverse);
each runs from the repository root, e.g. ``python -m experiments.ctg_variants``.
"""

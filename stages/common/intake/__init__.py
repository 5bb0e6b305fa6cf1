"""How data comes in: downloads, source listings, Great Expectations checks, untrusted images,
``fetal add-data``.
"""

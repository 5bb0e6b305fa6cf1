"""The CTG DVC stages, one module each (``python -m stages.ctg.pipeline.STAGE``), each a thin
``main()``.
"""

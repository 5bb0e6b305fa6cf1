"""The ultrasound DVC stages, one module each (``python -m stages.ultrasound.pipeline.STAGE``)."""

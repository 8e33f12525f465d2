"""Training, export and engine build for the HepaScreen VNet (PaddlePaddle).

``training.phantoms`` imports no training framework; the rest needs the ``train`` extra.
"""

"""The engine: frozen-ViT feature stores, the two trainers, and evaluation of both stages."""

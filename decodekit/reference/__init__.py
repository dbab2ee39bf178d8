"""Plain-PyTorch implementations: the executable spec every backend is tested against."""

"""decodekit's microbenchmarks, installed as ``decodekit.bench`` (``decodekit bench FAMILY``)."""

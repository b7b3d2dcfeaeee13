"""KServe transformer: decode + shared preprocessing -> Triton (v2) -> labels."""

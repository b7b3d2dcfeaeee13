"""The local runtime: Triton (PyTriton), transformer, gateway, detector on localhost."""

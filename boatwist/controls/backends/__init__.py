"""One module per way of reaching the hardware, all behind L{base.Backend}."""

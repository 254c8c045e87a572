"""DRIP: Dynamic token Reduction vIsion transformer via Pooling."""

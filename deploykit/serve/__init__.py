"""Serving: the BentoML service, the KServe v2 routes and the Triton model-repository writer."""

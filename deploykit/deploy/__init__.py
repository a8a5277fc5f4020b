"""Deployment: container images (BentoML containerize) and Kubernetes manifests (kustomize)."""

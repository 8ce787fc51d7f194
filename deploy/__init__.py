"""Deploying functions: the OpenFaaS gateway client, the embedded runtime, regimes, stack.yml."""

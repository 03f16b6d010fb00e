"""Decoding interventions, one unit each under one protocol (:mod:`adapt_hooks.methods.base`)."""

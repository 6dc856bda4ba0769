"""Consistency methods: which pairs of noise levels a step trains on, where its target comes from, and the
loss. `plan.py` turns a recipe's method block into those pieces; each method's ingredients sit beside it."""

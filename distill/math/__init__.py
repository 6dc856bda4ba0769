"""The math every method shares: noise-level grids, the consistency parameterisation, ODE solvers."""

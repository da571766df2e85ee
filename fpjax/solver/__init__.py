"""The Fokker-Planck equation on a pixel grid: stencils, initial densities, linear solves and transforms,
the schemes (the papers' log-density scheme, the linear density and spectral schemes) and the cross-matrix
projection."""

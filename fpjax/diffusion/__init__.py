"""Score-based diffusion: the SDEs, reverse-SDE and ODE sampling, PDS preconditioning, the score
Fokker-Planck residual, PF-ODE likelihoods and exact mixture scores."""

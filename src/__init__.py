"""CSRAE sweep harness: VAEs and Cauchy-Schwarz regularised autoencoders with mixture priors."""

"""geoprobe: does this model compute Bayesian posteriors, and does its internal geometry show it?"""

__version__ = "0.1.0"

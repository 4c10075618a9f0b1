"""Noise-stability meters of Arora et al. (ICML 2018) for conv nets."""

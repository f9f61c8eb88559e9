"""fastgrpo.kernels"""

"""fastgrpo.core"""

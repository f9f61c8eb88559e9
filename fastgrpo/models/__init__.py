"""fastgrpo.models"""

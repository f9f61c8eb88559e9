"""fastgrpo.train"""

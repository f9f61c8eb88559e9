"""fastgrpo.data"""

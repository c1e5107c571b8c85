"""corral.storage"""

"""corral.kvm"""

"""corral.lxc"""

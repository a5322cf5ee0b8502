"""ringfs"""

"""introspection"""

"""The trio runtime: the only package that imports trio."""

"""Malicious and damaged checkpoint generators; every file they write must be refused."""

"""Code shared by every Stasis CI service."""

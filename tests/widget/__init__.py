"""Widget state tests (no browser): a numpy fake influence source for most, one real TracInCPFast."""

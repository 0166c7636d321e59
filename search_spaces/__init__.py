"""The shipped search spaces (TOML files); ``study.space.load_space(NAME)`` finds them here."""
